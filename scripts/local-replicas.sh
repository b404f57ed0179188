#!/usr/bin/env bash
# N `tnn serve` replicas on 127.0.0.1 behind HAProxy with the shipped config (deploy/haproxy/haproxy.cfg):
# session affinity on X-Session-ID / the OpenAI `user` field, least connections otherwise.
# Usage: scripts/local-replicas.sh [N (default 3, at most 8)] [MODEL_DIR (default: the shipped model)]
#   API through the balancer  http://127.0.0.1:8080   (TNN_LB_BIND)
#   HAProxy stats + metrics   http://127.0.0.1:8404/  and /metrics
#   replica i                 http://127.0.0.1:$((8000 + i))
# Needs haproxy (apt-get install haproxy, or `make deploy-tools`) and the project's venv (`make venv`).
# Ctrl-C stops the balancer and drains every replica.
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${1:-3}
model_dir=${2:-}
if (( replicas < 1 || replicas > 8 )); then
    echo "N must be 1..8 (the config lists 8 static replicas; use TNN_UPSTREAM_DNS for more)" >&2
    exit 2
fi
command -v haproxy >/dev/null || { echo "haproxy not installed: apt-get install haproxy" >&2; exit 2; }
TNN=${TNN:-.venv/bin/tnn}

pids=()
cleanup() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for i in $(seq 1 "$replicas"); do
    port=$((8000 + i))
    "$TNN" serve ${model_dir:+"$model_dir"} --host 127.0.0.1 --port "$port" &
    pids+=("$!")
    export "TNN_REPLICA_$i=127.0.0.1:$port"
done
export TNN_LB_BIND=${TNN_LB_BIND:-127.0.0.1:8080}
haproxy -W -f deploy/haproxy/haproxy.cfg &
pids+=("$!")
echo "balancer on http://$TNN_LB_BIND in front of $replicas replicas (ports 8001..$((8000 + replicas)))" >&2
wait -n "${pids[@]}"
