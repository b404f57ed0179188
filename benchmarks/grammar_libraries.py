"""Which grammar library for structured output: cost per decode step on the shipped model's vocabulary (4096 tokens).

For each library that imports (xgrammar, llguidance, outlines-core) and each grammar (a small JSON schema, any JSON,
a regex), walk the canonical tokenization of a valid output token by token, as a constrained decode would:
  fill the next-token bitmask -> apply it to a (1, V) float32 logits row -> accept the token.
Per step, the three are timed together (the per-token cost a constrained row adds to a decode step); compiling the
grammar is timed apart (paid once per request, or once per schema with a cache). The libraries run interleaved,
walk after walk, so a busy shared CPU slows them alike. The baseline is the shipped model's batch-1 decode step
measured in the same run: a step's cost ratio says what constraining one row adds.

    OMP_NUM_THREADS=1 python benchmarks/grammar_libraries.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import tnn.model
from tnn.model.default import default_model_dir
from tnn.server.tokenizer import ServerTokenizer

RESULTS = Path(__file__).resolve().parent / "results"

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0},
        "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "lines"],
    "additionalProperties": False,
}
INSTANCE = {"name": "Lady Macbeth", "age": 41, "lines": ["Out, damned spot!", "Out, I say!"]}
REGEX = r"(Act|Scene) [IVX]{1,4}: [A-Za-z ,]{1,40}\."
REGEX_TEXT = "Scene IV: Enter Macbeth and Banquo, attended."
GRAMMARS = {
    "json_schema": ("schema", json.dumps(SCHEMA), json.dumps(INSTANCE, separators=(",", ":"))),
    "json_object": ("any_json", None, json.dumps(INSTANCE, separators=(",", ":"))),
    "regex": ("regex", REGEX, REGEX_TEXT),
}


def byte_level_vocabulary(tokenizer: ServerTokenizer) -> dict[int, bytes]:
    """Token id -> the bytes it stands for (byte-level BPE: via the GPT-2 byte <-> unicode table)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = tokenizer.hf.get_vocab()
    special = set(tokenizer.hf.all_special_tokens)
    return {i: bytes(to_byte[c] for c in token) for token, i in vocab.items() if token not in special}


class Walker:
    """One library: compile a grammar, then walk tokens (mask, apply, accept)."""

    name: str

    def compile(self, kind: str, source: str | None) -> Any: ...
    def walk(self, compiled: Any, tokens: list[int], logits: torch.Tensor) -> list[float]: ...


class XGrammar(Walker):
    name = "xgrammar"

    def __init__(self, tokenizer: ServerTokenizer, vocab_size: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def compile(self, kind: str, source: str | None) -> Any:
        if kind == "schema":
            return self.compiler.compile_json_schema(source, any_whitespace=False, separators=(",", ":"))
        if kind == "any_json":
            return self.compiler.compile_builtin_json_grammar()
        return self.compiler.compile_regex(source)

    def walk(self, compiled: Any, tokens: list[int], logits: torch.Tensor) -> list[float]:
        matcher = self.xgr.GrammarMatcher(compiled)
        times = []
        for token in tokens:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(self.bitmask, 0)
            self.xgr.apply_token_bitmask_inplace(logits, self.bitmask)
            accepted = matcher.accept_token(token)
            times.append(time.perf_counter() - start)
            assert accepted, f"xgrammar refused token {token}"
        return times


class LLGuidance(Walker):
    name = "llguidance"

    def __init__(self, tokenizer: ServerTokenizer, vocab_size: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.llg_torch = llguidance.torch
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer.hf, n_vocab=vocab_size)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)

    def compile(self, kind: str, source: str | None) -> Any:
        matcher_cls = self.llg.LLMatcher
        if kind == "schema":
            grammar = matcher_cls.grammar_from_json_schema(source, defaults={"whitespace_flexible": False})
        elif kind == "any_json":
            grammar = matcher_cls.grammar_from_json_schema('{"type": "object"}')
        else:
            grammar = matcher_cls.grammar_from_regex(source)
        matcher = matcher_cls(self.tokenizer, grammar)  # llguidance compiles lazily: build one matcher here
        assert not matcher.is_error(), matcher.get_error()
        return grammar

    def walk(self, compiled: Any, tokens: list[int], logits: torch.Tensor) -> list[float]:
        matcher = self.llg.LLMatcher(self.tokenizer, compiled)
        times = []
        for token in tokens:
            start = time.perf_counter()
            self.llg_torch.fill_next_token_bitmask(matcher, self.bitmask, 0)
            self.llg_torch.apply_token_bitmask_inplace(logits, self.bitmask)
            accepted = matcher.consume_token(token)
            times.append(time.perf_counter() - start)
            assert accepted, f"llguidance refused token {token}: {matcher.get_error()}"
        return times


class OutlinesCore(Walker):
    name = "outlines-core"

    def __init__(self, tokenizer: ServerTokenizer, vocab_size: int) -> None:
        import outlines_core
        from outlines_core.kernels import torch as kernels

        self.oc = outlines_core
        self.kernels = kernels
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, raw in byte_level_vocabulary(tokenizer).items():
            by_bytes.setdefault(raw, []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_id, by_bytes)
        self.bitmask = kernels.allocate_token_bitmask(vocab_size)

    def compile(self, kind: str, source: str | None) -> Any:
        if kind == "schema":
            regex = self.oc.json_schema.build_regex_from_schema(source, whitespace_pattern="")
        elif kind == "any_json":
            return None  # outlines-core has no grammar for arbitrary JSON (regular languages only)
        else:
            regex = source
        return self.oc.Index(regex, self.vocabulary)

    def walk(self, compiled: Any, tokens: list[int], logits: torch.Tensor) -> list[float]:
        guide = self.oc.Guide(compiled)
        times = []
        for token in tokens:
            start = time.perf_counter()
            self.kernels.fill_next_token_bitmask(guide, self.bitmask)
            self.kernels.apply_token_bitmask_inplace(logits, self.bitmask)
            guide.advance(token)
            times.append(time.perf_counter() - start)
        return times


def load_walkers(tokenizer: ServerTokenizer, vocab_size: int) -> tuple[list[Walker], dict[str, str]]:
    walkers, missing = [], {}
    for cls in (XGrammar, LLGuidance, OutlinesCore):
        try:
            walkers.append(cls(tokenizer, vocab_size))
        except ImportError as exc:
            missing[cls.name] = str(exc)
    return walkers, missing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walks", type=int, default=30, help="walks per library and grammar (after one warm-up)")
    parser.add_argument("--out", type=Path, default=RESULTS / "grammar_libraries.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    model_dir = default_model_dir()
    tokenizer = ServerTokenizer(model_dir)
    model = tnn.model.load(model_dir, device="cpu", dtype=torch.float32)
    tnn.model.attach_ssm(model)
    vocab_size = model.config.vocab_size
    walkers, missing = load_walkers(tokenizer, vocab_size)
    logits = torch.zeros(1, vocab_size)

    results: dict[str, Any] = {}
    step_times: list[float] = []
    with torch.inference_mode():
        _, state = model.prefill(torch.tensor([[tokenizer.eos_id or 0] * 8]))
        token = torch.tensor([0])
        for _ in range(5):
            model.step(token, state)
        for grammar, (kind, source, text) in GRAMMARS.items():
            tokens = tokenizer.encode(text, add_bos=False)
            compiled: dict[str, Any] = {}
            compile_s: dict[str, float] = {}
            for walker in walkers:
                compile_s[walker.name], compiled[walker.name] = timed(
                    lambda w=walker, k=kind, s=source: w.compile(k, s)
                )
            active = [w for w in walkers if compiled[w.name] is not None]
            per_token: dict[str, list[float]] = {w.name: [] for w in active}
            for walk in range(args.walks + 1):
                for walker in active:
                    times = walker.walk(compiled[walker.name], tokens, logits)
                    if walk:  # the first walk is the warm-up
                        per_token[walker.name].extend(times)
                for _ in range(3):  # the baseline, interleaved with the walks
                    step_times.append(timed(lambda: model.step(token, state))[0])
            results[grammar] = {
                "tokens": len(tokens),
                "libraries": {
                    w.name: {
                        "compile_ms": compile_s[w.name] * 1e3,
                        "median_us_per_token": statistics.median(per_token[w.name]) * 1e6,
                        "p90_us_per_token": statistics.quantiles(per_token[w.name], n=10)[-1] * 1e6,
                        "max_us_per_token": max(per_token[w.name]) * 1e6,
                    }
                    for w in active
                },
                "unsupported": [w.name for w in walkers if compiled[w.name] is None],
            }
    step_us = statistics.median(step_times) * 1e6
    for grammar in results.values():
        for entry in grammar["libraries"].values():
            entry["ratio_to_decode_step"] = entry["median_us_per_token"] / step_us
    report = {
        "vocab_size": vocab_size,
        "decode_step_batch1_median_us": step_us,
        "grammars": results,
        "missing": missing,
        "versions": {w.name: _version(w.name) for w in walkers},
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out.with_suffix(".png"))
    print(json.dumps(report, indent=2))
    return 0


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name.replace("-", "_"))


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grammars = list(report["grammars"])
    names = sorted({n for g in report["grammars"].values() for n in g["libraries"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [report["grammars"][g]["libraries"].get(name, {}).get("median_us_per_token", 0) for g in grammars]
        ax.bar([x + i * width for x in range(len(grammars))], values, width, label=name)
    ax.axhline(report["decode_step_batch1_median_us"], color="k", ls="--", label="decode step, batch 1")
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(grammars))], grammars)
    ax.set_yscale("log")
    ax.set_ylabel("µs per token (mask + apply + accept), median")
    ax.set_title(f"Grammar libraries on a {report['vocab_size']}-token vocabulary (CPU, 1 thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
