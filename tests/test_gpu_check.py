"""benchmarks/gpu_check.sh and benchmarks/gpu_decode.py, tested as far as a CPU can: the script parses, rejects
unknown flags, and the benchmark's whole pipeline (decode rows against GPT-2, bandwidth, prefill, JSON + PNG)
runs in --cpu-smoke mode. The numbers themselves come from a GPU machine running gpu_check.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_script_parses_and_rejects_unknown_flags(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    result = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.slow
def test_gpu_decode_cpu_smoke_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_decode.py"), "--cpu-smoke", "--out", str(tmp_path)],
        check=True, env=env, timeout=400, capture_output=True,
    )  # fmt: skip
    results = json.loads((tmp_path / "gpu_decode.json").read_text())
    assert results["cpu_smoke"] and results["variants"] == ["eager"] and results["state_dtype"] == "float32"
    cells = {(row["batch"], row["position"]) for row in results["decode"]}
    assert cells == {(b, p) for b in (1, 4) for p in (128, 256)}
    for row in results["decode"]:
        assert row["eager_ms"] > 0 and row["gpt2_ms"] > 0
        assert row["eager_vs_gpt2"] == pytest.approx(row["eager_ms"] / row["gpt2_ms"])
    bandwidth = results["bandwidth"]
    assert bandwidth["copy_bytes_per_s"] > 0 and [r["batch"] for r in bandwidth["rows"]] == [1, 4]
    for row in bandwidth["rows"]:
        assert row["bytes_per_step"] > results["tnn_parameters"]  # every weight once, at least a byte each
        assert row["fraction_of_copy_bandwidth"] == pytest.approx(row["bytes_per_s"] / bandwidth["copy_bytes_per_s"])
    assert [r["length"] for r in results["prefill"]] == [256, 1024]
    assert all(r["tokens_per_s"] > 0 for r in results["prefill"])
    assert (tmp_path / "gpu_decode.png").stat().st_size > 10_000
