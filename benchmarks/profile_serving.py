"""Where a streamed token's time goes in `tnn serve`: a py-spy flame graph of a real server under one streaming
client, plus the client's inter-token latency, so a change to the per-token path is judged by both.

    .venv/bin/python benchmarks/profile_serving.py --model-dir DIR --label before [--serve-arg=--native-step=off]

Starts `tnn serve DIR` (2 threads unless told), sends back-to-back streaming completions (ignore_eos, 128 tokens,
temperature 0.8, top_p 0.95) from one client for `--seconds`, and records every thread of the server with
py-spy (`pip install py-spy`; sampling at 500 Hz, idle frames dropped) meanwhile. Writes
benchmarks/results/profile_serving_LABEL.svg (the flame graph) and .json (ITL and TTFT medians, tokens/s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (ServerProcess)

from tests.support import ServerProcess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun."


def stream_once(client: httpx.Client, tokens: int, seed: int) -> tuple[float, list[float]]:
    """One streamed completion: TTFT and the gaps between chunks that carried text (seconds)."""
    body = {"prompt": f"{seed}: {PROMPT}", "max_tokens": tokens, "temperature": 0.8, "top_p": 0.95,
            "ignore_eos": True, "stream": True, "seed": seed, "stop": []}  # fmt: skip
    start = time.perf_counter()
    times: list[float] = []
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter())
    return times[0] - start, [b - a for a, b in zip(times, times[1:], strict=False)]


def drive(url: str, seconds: float, tokens: int, out: dict[str, list[float]]) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=120) as client:
        seed = 0
        while time.monotonic() < deadline:
            ttft, gaps = stream_once(client, tokens, seed)
            out["ttft"].append(ttft)
            out["itl"].extend(gaps)
            out["tokens"].append(tokens)
            seed += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--label", required=True, help="names the output files (e.g. before, after)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--format", default="flamegraph", choices=["flamegraph", "raw"], help="py-spy output")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `tnn serve` flag (repeatable)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    RESULTS.mkdir(exist_ok=True)
    svg = RESULTS / f"profile_serving_{args.label}.{'svg' if args.format == 'flamegraph' else 'txt'}"
    env = {"TNN_THREADS": str(args.threads), "TNN_NATIVE_STEP": "wait"}
    with ServerProcess(args.model_dir, args=args.serve_arg, env=env) as server:
        warm = {"ttft": [], "itl": [], "tokens": []}
        drive(server.url, 3.0, args.tokens, warm)
        measured: dict[str, list[float]] = {"ttft": [], "itl": [], "tokens": []}
        client = threading.Thread(target=drive, args=(server.url, args.seconds, args.tokens, measured))
        start = time.perf_counter()
        client.start()
        assert server.process is not None
        subprocess.run([py_spy, "record", "--pid", str(server.process.pid), "--duration", str(int(args.seconds)),
                        "--rate", "500", "--threads", "--nonblocking", "--format", args.format, "--output", str(svg)],
                       check=True, capture_output=True)  # fmt: skip
        client.join()
        elapsed = time.perf_counter() - start
    result = {
        "label": args.label,
        "model_dir": str(args.model_dir),
        "serve_args": args.serve_arg,
        "threads": args.threads,
        "requests": len(measured["ttft"]),
        "ttft_p50_ms": 1e3 * statistics.median(measured["ttft"]),
        "itl_p50_ms": 1e3 * statistics.median(measured["itl"]),
        "tokens_per_s": sum(measured["tokens"]) / elapsed,
        "flame_graph": svg.name,
    }
    (RESULTS / f"profile_serving_{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
