"""How long `tnn convert` of the shipped model takes, end to end, as a user runs it (one thread).

Runs `tnn convert model/default_model DST --force` in a fresh interpreter `--runs` times (after one warm-up run
that fills the OS file cache), each with OMP_NUM_THREADS=1: wall seconds, the child's user and system CPU seconds
and the stage timings convert writes into DST/conversion.json (load, the fit, kernel check, the evaluation pass
with the logits check, fidelity, past n, write); medians over the runs. The CPU seconds say more than the wall on
a shared machine; the load average at the start of each run is recorded. Optionally the same for another source
tree (`--baseline DIR`: a directory holding a `tnn` package tree, e.g. an older checkout's cli/, model/, convert/
linked as tnn/cli, tnn/model, tnn/convert), in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/convert_speed.py --runs 3

Writes benchmarks/results/convert_speed.json and convert_speed.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE = Path(__file__).resolve().parent.parent / "model" / "default_model"


def one_run(source: Path, destination: Path, python_path: str | None, extra: list[str]) -> dict[str, Any]:
    """One `tnn convert` in a fresh interpreter: wall, child CPU seconds, convert's own stage timings."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if python_path:
        env["PYTHONPATH"] = python_path
    command = [sys.executable, "-m", "tnn.cli.main", "--log-level", "WARNING", "convert", str(source),
               str(destination), "--force", *extra]  # fmt: skip
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads((destination / "conversion.json").read_text())
    return {
        "load_average": load,
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "stages_s": report["timings_s"],
    }


def measure(name: str, source: Path, python_path: str | None, runs: int, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        destination = Path(scratch) / "converted"
        one_run(source, destination, python_path, extra)  # warm-up: file cache, bytecode
        rows = [one_run(source, destination, python_path, extra) for _ in range(runs)]
    stages = {key: statistics.median(r["stages_s"].get(key, 0.0) for r in rows) for key in rows[0]["stages_s"]}
    medians = {key: statistics.median(r[key] for r in rows) for key in ("wall_s", "user_s", "system_s")}
    return {"name": name, "source": str(source), "args": extra, "runs": rows, "median": medians, "stages": stages}


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 1.6 + 0.9 * len(record["results"])))
    stages = list(dict.fromkeys(stage for result in record["results"] for stage in result["stages"]))
    for row, result in enumerate(record["results"]):
        left = 0.0
        for stage, seconds in result["stages"].items():
            color = f"C{stages.index(stage)}"
            axis.barh(row, seconds, left=left, color=color, label=stage if row == 0 else None)
            left += seconds
        median = result["median"]
        axis.text(left, row, f"  wall {median['wall_s']:.1f} s, CPU {median['user_s'] + median['system_s']:.1f} s",
                  va="center")  # fmt: skip
    axis.set_yticks(range(len(record["results"])), [r["name"] for r in record["results"]])
    axis.set_xlabel("seconds (median stage timings of tnn convert, one thread, shared machine)")
    axis.legend(fontsize=7, ncol=len(stages), loc="upper center", bbox_to_anchor=(0.5, 1.25))
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="PYTHONPATH of an older tnn tree to time too")
    parser.add_argument("--baseline-source", type=Path, default=None, help="its model directory (default: ours)")
    parser.add_argument("--baseline-name", default="baseline", help="what the baseline is, for the results")
    parser.add_argument("--out", type=Path, default=RESULTS / "convert_speed.json")
    args = parser.parse_args()
    results = [measure("this tree", SOURCE, None, args.runs, [])]
    results.append(measure("this tree, --no-past-n", SOURCE, None, args.runs, ["--no-past-n"]))
    if args.baseline is not None:
        source = args.baseline_source or SOURCE
        results.append(measure(args.baseline_name, source, str(args.baseline), args.runs, []))
    record = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/convert_speed.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; shared with "
        "other jobs (load average per run)",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out.with_suffix(".png"))
    for result in results:
        print(result["name"], {k: round(v, 2) for k, v in result["median"].items()},  # noqa: T201
              {k: round(v, 2) for k, v in result["stages"].items()})  # fmt: skip


if __name__ == "__main__":
    main()
