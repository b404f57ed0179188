"""Incremental detokenization cost per token: `tokenizers`' DecodeStream (what the server uses) against the same
two-offset scheme in Python (TGI's; what the server used before), on the shipped tokenizer.

Both run over the same token ids, interleaved, `--repeats` times; medians of microseconds per token and their ratio
go to benchmarks/results/detokenizer.json and a bar plot to detokenizer.png.

    .venv/bin/python benchmarks/detokenizer.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

import tnn.model  # noqa: E402
from tnn.server.textstream import IncrementalDetokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TEXTS = {
    "english": "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n",
    "mixed scripts": "Café, naïve, façade — 日本語のテキスト、中文文本、한국어 텍스트 🙂 🚀 ✨ ",
}


class PythonWindowDetokenizer:
    """The baseline: decode prefix..read and prefix..end each token, emit the growth unless it ends in U+FFFD."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
        self.tokens: list[int] = []
        self._prefix = self._read = 0

    def add(self, token: int) -> str:
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.tokens)
        return after[len(before) :]


def run_once(make: Callable[[], PythonWindowDetokenizer | IncrementalDetokenizer], ids: list[int]) -> tuple[float, str]:
    detokenizer = make()
    start = time.perf_counter()
    text = "".join(detokenizer.add(token) for token in ids)
    return time.perf_counter() - start, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per run")
    args = parser.parse_args(argv)
    tokenizer = Tokenizer.from_file(str(Path(tnn.model.default_model_dir()) / "tokenizer.json"))
    makers = {
        "python window (baseline)": lambda: PythonWindowDetokenizer(tokenizer),
        "DecodeStream": lambda: IncrementalDetokenizer(tokenizer),
    }
    rows = []
    for name, text in TEXTS.items():
        ids = tokenizer.encode(text * (args.tokens // 10), add_special_tokens=False).ids[: args.tokens]
        expected = tokenizer.decode(ids)
        times: dict[str, list[float]] = {m: [] for m in makers}
        for _ in range(args.repeats):  # interleaved, so both see the same load on a shared CPU
            for maker_name, make in makers.items():
                seconds, streamed = run_once(make, ids)
                assert expected.startswith(streamed), maker_name
                times[maker_name].append(seconds)
        us = {m: 1e6 * statistics.median(t) / len(ids) for m, t in times.items()}
        row = {"text": name, "tokens": len(ids), "us_per_token": us,
               "ratio_baseline_over_decodestream": us["python window (baseline)"] / us["DecodeStream"]}  # fmt: skip
        print(json.dumps(row))
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    out = {"tokenizers": tokenizers.__version__, "repeats": args.repeats, "rows": rows}
    (RESULTS / "detokenizer.json").write_text(json.dumps(out, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for k, maker_name in enumerate(makers):
        values = [row["us_per_token"][maker_name] for row in rows]
        ax.bar([i + (k - 0.5) * width for i in range(len(rows))], values, width, label=maker_name)
    ax.set_xticks(range(len(rows)), [row["text"] for row in rows])
    ax.set_ylabel("µs per token (median)")
    ax.set_title("Incremental detokenization, shipped tokenizer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "detokenizer.png", dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
