#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU, from a fresh checkout, in under 8 minutes:
#   install -> the CUDA tests -> decode/bandwidth/prefill numbers -> a short server load run,
# JSON + PNG into benchmarks/results/gpu/ (plus gpu_check.json: each stage's exit status and seconds,
# and gpu_check.log: everything the stages printed).
#
#   benchmarks/gpu_check.sh               # on the GPU machine
#   benchmarks/gpu_check.sh --cpu-smoke   # anywhere: the same stages on the CPU with tiny sizes (tests the script)
#   benchmarks/gpu_check.sh --out DIR     # results elsewhere
#
# Install: PYTHON if set; else ./.venv if it imports torch and tnn; else a venv .venv-gpu with
# --system-site-packages over the first python3 whose torch sees CUDA (so torch is not downloaded again), with
# `pip install --no-deps -e .` when the project's dependencies are importable there, else `pip install -e .[test,bench]`.
# Every stage is bounded by `timeout`; a failed stage is recorded and the next one still runs; the exit status is
# that of the first failed stage.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
OUT=benchmarks/results/gpu
while [[ $# -gt 0 ]]; do
    case $1 in
        --cpu-smoke) SMOKE=1 ;;
        --out) OUT=$2; shift ;;
        *) echo "usage: $0 [--cpu-smoke] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
: >"$LOG"
STAGES=()
STATUS=0

stage() {  # stage NAME SECONDS COMMAND...: run bounded, log it, record rc and seconds
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s): $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    echo "== $name: exit $rc after ${took}s" | tee -a "$LOG"
    STAGES+=("$name $rc $took")
    if [[ $rc -ne 0 && $STATUS -eq 0 ]]; then STATUS=$rc; fi
}

imports_tnn() { "$1" -c "import torch, tnn.server.decode_graphs" >/dev/null 2>&1; }

cuda_python() {  # the first python3 on PATH (or python) whose torch sees a GPU
    local candidate
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import torch; assert torch.cuda.is_available()" \
            >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

install() {
    if [[ -n ${PYTHON:-} ]]; then
        imports_tnn "$PYTHON" || "$PYTHON" -m pip install -q -e ".[test,bench]"
        return
    fi
    if [[ -x .venv/bin/python ]] && imports_tnn .venv/bin/python; then
        PYTHON=.venv/bin/python
        return
    fi
    local base
    base=$(cuda_python) || { echo "no python with a CUDA-enabled torch on PATH (set PYTHON=...)" >&2; return 1; }
    "$base" -m venv --system-site-packages .venv-gpu || return 1
    PYTHON=.venv-gpu/bin/python
    if "$PYTHON" -c "import fastapi, uvicorn, pydantic_settings, tokenizers, safetensors, prometheus_client, \
transformers, matplotlib, httpx, openai, pytest, scipy" >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-deps -e .
    else
        "$PYTHON" -m pip install -q -e ".[test,bench]"
    fi
}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "== install" | tee -a "$LOG"
start=$SECONDS
install >>"$LOG" 2>&1
rc=$?
STAGES+=("install $rc $((SECONDS - start))")
echo "== install: exit $rc, python ${PYTHON:-none}" | tee -a "$LOG"
if [[ $rc -ne 0 ]]; then exit "$rc"; fi

if [[ $SMOKE -eq 1 ]]; then
    export TNN_DEVICE=cpu
    DECODE=(--cpu-smoke)
    LOAD=(--device cpu --levels 1 2 --requests-per-client 1)
else
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
    export TNN_DEVICE=cuda
    DECODE=(--device cuda)
    LOAD=(--device cuda --levels 1 16 64 --requests-per-client 2)
fi
# the CUDA-only tests (graph replay == eager on every bucket; they skip on the CPU), then the engine and the HTTP
# server on $TNN_DEVICE (captured graphs on CUDA)
stage gpu_tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests
stage server_tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider -x tests/server/test_decode_graphs.py \
    tests/server/test_engine.py tests/server/test_api.py tests/server/test_streaming.py
stage decode 210 "$PYTHON" benchmarks/gpu_decode.py "${DECODE[@]}" --out "$OUT"
stage serve_load 80 "$PYTHON" benchmarks/serve_load.py "${LOAD[@]}" --repeats 1 --output "$OUT/serve_load.json"

"$PYTHON" - "$OUT/gpu_check.json" "$SMOKE" "${STAGES[@]}" <<'EOF'
import json, sys
path, smoke, stages = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
rows = [dict(zip(("stage", "exit", "seconds"), s.split(" "))) for s in stages]
rows = [{"stage": r["stage"], "exit": int(r["exit"]), "seconds": int(r["seconds"])} for r in rows]
json.dump({"cpu_smoke": smoke, "stages": rows, "total_seconds": sum(r["seconds"] for r in rows)},
          open(path, "w"), indent=2)
print(f"wrote {path}")
EOF
echo "results in $OUT (log: $LOG); exit $STATUS"
exit "$STATUS"
