#!/usr/bin/env bash
# Fill deploy/wheels/ with every wheel the image needs (dependencies, torch, the build backend) so that
# `docker build --build-arg PIP_NO_INDEX=1` installs without reaching any index: reproducible, offline-capable,
# and the only way to build here, where the image cannot use the host's index certificates.
# torch is pinned to TORCH (default 2.13.0, the local CPU wheel on the development machines); the
# project's own wheel is not kept because the image builds the project from its source.
# Usage: scripts/download-wheels.sh [PYTHON]   (PYTHON: the interpreter whose pip downloads, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${1:-python3}
TORCH=${TORCH:-2.13.0}
DEST=deploy/wheels

"$PYTHON" -m pip wheel --quiet --wheel-dir "$DEST" . "torch==$TORCH"
"$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$DEST" "setuptools>=68" wheel
rm -f "$DEST"/tnn_serve-*.whl
echo "$(find "$DEST" -name '*.whl' | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1))"
