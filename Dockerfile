# tnn-serve image: `tnn serve` on port 8000 with the shipped default model.
#   docker build -t tnn-serve .                                   CPU (default)
#   docker build -t tnn-serve:cuda --build-arg TORCH_VARIANT=cu128 .  CUDA (run with --gpus all)
#   scripts/download-wheels.sh && docker build --build-arg PIP_NO_INDEX=1 .   offline, from deploy/wheels/
# BASE_IMAGE must be a Debian-like image with python3 >= 3.11 and the venv module; both stages use it so the
# virtual environment copied between them points at the same interpreter.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
# Which PyTorch build to install from the PyTorch index: cpu, or a CUDA tag such as cu126 / cu128.
# CUDA wheels bring their own CUDA runtime, so the same slim base serves both; the host provides the driver.
ARG TORCH_VARIANT=cpu
# 1: install only from the wheels in deploy/wheels/ (scripts/download-wheels.sh), reaching no index.
ARG PIP_NO_INDEX=0
ENV PIP_NO_INDEX=${PIP_NO_INDEX} \
    PIP_FIND_LINKS=/tmp/wheels \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/wheels/ /tmp/wheels/
COPY . /src/
# A venv without pip: the base image's pip installs into it, so the runtime stage gets no installer.
# A regular (non-editable) install, so the shipped model travels as package data inside site-packages.
# torch's C++ headers and native test binaries (~145 MB) only serve extension builds and torch's own tests.
RUN python3 -m venv --without-pip /opt/venv \
    && python3 -m pip --python /opt/venv/bin/python install /src \
    && rm -rf /opt/venv/lib/python3*/site-packages/torch/include /opt/venv/lib/python3*/site-packages/torch/test \
    && /opt/venv/bin/tnn --help > /dev/null

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tnn-serve" \
      org.opencontainers.image.description="Toeplitz Neural Network language models over an OpenAI-compatible API" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin tnn
COPY --from=builder /opt/venv /opt/venv
# TNN_* are the server's settings (pydantic-settings); any of them can be overridden with -e / environment:.
# TNN_HOST=0.0.0.0 because inside a container the port is published from outside the loopback.
# HF_HUB_OFFLINE: models are local directories; never wait on a hub from a server (or an air-gapped host).
# TNN_MODEL_DIR is unset: the shipped model is served unless a model directory is mounted and named, e.g.
#   -v /path/to/model:/models:ro -e TNN_MODEL_DIR=/models
# TNN_NATIVE_STEP=off, TNN_NATIVE_KERNELS=off: the slim image has no C/C++ compiler and no torch headers, so the
# compiled decode step and the native sampler (docs/decode-speed.md) cannot be built in it; their torch twins serve.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/tnn/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TNN_HOST=0.0.0.0 \
    TNN_PORT=8000 \
    TNN_NATIVE_STEP=off \
    TNN_NATIVE_KERNELS=off
USER 1000:1000
WORKDIR /home/tnn
EXPOSE 8000
# Liveness only (/ready is for load balancers); start-period covers model loading. No curl in slim images.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TNN_PORT', '8000'), timeout=4)"]
# tnn is PID 1 (exec form): SIGTERM reaches it directly, it stops accepting, drains running requests, exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tnn", "serve"]
