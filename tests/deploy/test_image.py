"""The image for real: buildah builds the Dockerfile on the local debootstrap base, then its entrypoint serves.

buildah's chroot isolation shares the host's network namespace, so the container's server is reached on
127.0.0.1 at a free port set through TNN_HOST / TNN_PORT, as an operator would set them with -e.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import make_tiny_model_dir

from .conftest import (
    buildah_run,
    complete,
    container,
    container_process,
    free_port,
    http_json,
    image_config,
    require_tool,
    stop,
    tail,
    wait_http_ok,
)

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(1200)]

# torch (CPU) is ~600 MB of the image; the budget catches a build context or cache leaking into it.
SIZE_BUDGET_GB = 1.5
DRAIN_TIMEOUT_S = 30  # the server's default TNN_DRAIN_TIMEOUT


@contextlib.contextmanager
def entrypoint_serving(
    image: str, log: Path, env: dict[str, str] | None = None, volumes: tuple[str, ...] = ()
) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """The image's ENTRYPOINT + CMD running in a fresh container until ready; yields (container, URL, process)."""
    port = free_port()
    config = image_config(image)
    with container(image) as ctr:
        argv = buildah_run(
            ctr,
            *config["Entrypoint"],
            *(config["Cmd"] or []),
            env={"TNN_HOST": "127.0.0.1", "TNN_PORT": str(port), **(env or {})},
            volumes=volumes,
        )
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{base_url}/health", proc, log)
            wait_http_ok(f"{base_url}/ready", proc, log)
            yield ctr, base_url, proc
        finally:
            stop(proc)


def test_image_metadata(image: str) -> None:
    config = image_config(image)
    assert config["Entrypoint"] == ["tnn", "serve"]
    assert config["User"] == "1000:1000"
    assert "8000/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGTERM"
    assert "/health" in " ".join(config["Healthcheck"]["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TNN_HOST"] == "0.0.0.0" and env["TNN_PORT"] == "8000"
    assert "TNN_MODEL_DIR" not in env, "the shipped model is the default; a mounted one is named at run time"


def test_final_stage_has_no_build_tools_or_caches(image: str) -> None:
    checks = (
        "test $(id -u) = 1000"
        " && ! test -e /opt/venv/bin/pip && ! test -e /src && ! test -e /tmp/wheels"
        " && ! command -v gcc && ! test -d /root/.cache/pip"
        " && ! test -d /opt/venv/lib/python3.11/site-packages/torch/include"
        " && python3 -c 'import tnn.model, tnn.server'"
    )
    with container(image) as ctr:
        result = subprocess.run(buildah_run(ctr, "sh", "-c", checks), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_size_within_budget(image: str) -> None:
    size = subprocess.run(
        [require_tool("buildah"), "images", "--format", "{{.Size}}", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    value, unit = float(size[0]), size[1]
    gigabytes = value if unit == "GB" else value / 1000 if unit == "MB" else float("inf")
    assert gigabytes < SIZE_BUDGET_GB, f"image is {value} {unit}"


def test_entrypoint_serves_health_and_completion_then_drains_on_sigterm(image: str, tmp_path: Path) -> None:
    log = tmp_path / "container.log"
    with entrypoint_serving(image, log) as (ctr, base_url, proc):
        body = complete(base_url, prompt="The", max_tokens=4)
        assert body["object"] == "text_completion"
        assert isinstance(body["choices"][0]["text"], str)
        assert 1 <= body["usage"]["completion_tokens"] <= 4

        # The image's own HEALTHCHECK command, run inside the container as Docker would run it
        healthcheck = image_config(image)["Healthcheck"]["Test"]
        assert healthcheck[0] == "CMD"
        port = base_url.rsplit(":", 1)[1]
        probe = subprocess.run(
            buildah_run(ctr, *healthcheck[1:], env={"TNN_PORT": port}), capture_output=True, timeout=60
        )
        assert probe.returncode == 0, probe.stderr

        # STOPSIGNAL, as Docker delivers it: to the container's main process (buildah itself would SIGKILL
        # its child on SIGTERM). The server, running as the image's non-root user, must drain and finish.
        server = container_process(proc.pid)
        assert Path(f"/proc/{server}").stat().st_uid == 1000
        os.kill(server, signal.SIGTERM)
        proc.wait(timeout=DRAIN_TIMEOUT_S + 15)
        assert "Application shutdown complete" in log.read_text(), tail(log)


def test_mounted_model_dir_replaces_the_shipped_model(image: str, tmp_path: Path) -> None:
    """An operator's model, mounted read-only and named by TNN_MODEL_DIR, is the one served."""
    model_dir = make_tiny_model_dir(tmp_path / "operator-model")
    model_dir.chmod(0o755)  # as an operator must: the container's user (uid 1000) reads the mount
    for path in model_dir.iterdir():
        path.chmod(0o644)
    env = {"TNN_MODEL_DIR": "/models"}
    with entrypoint_serving(image, tmp_path / "container.log", env, volumes=(f"{model_dir}:/models:ro",)) as served:
        _, base_url, _ = served
        # The served id defaults to the model directory's name: the mount point, not the shipped model's
        assert [model["id"] for model in http_json(f"{base_url}/v1/models")["data"]] == ["models"]
        assert complete(base_url, max_tokens=2)["usage"]["completion_tokens"] >= 1
