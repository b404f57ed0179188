"""Structured output: grammars from requests, and per-row token masks for the engine (llguidance).

The HTTP side turns `response_format` (json_object, json_schema), vLLM's `guided_json` / `guided_regex` /
`guided_choice` and tool calls into one llguidance grammar (`Grammars.compile`, checked before the request is
queued: a bad schema or regex is a 400 naming the field). The engine gives each constrained sequence a
`TokenMatcher`: before each sampling step it writes the allowed tokens of every constrained row (`allowed_rows`),
the row's sampled token advances it (`consume`), and eos is allowed only where the grammar accepts (llguidance puts
eos in the mask exactly then). Constrained and free rows share the step; a free row costs nothing here.

Why llguidance (benchmarks/grammar_libraries.py, the shipped model's 4096-token vocabulary, one CPU thread):
xgrammar's masks are faster per token (25-36 us against 61-169 us) but both are a few percent of a batch-1 decode
step (~4-6 ms), llguidance compiles a grammar in ~1 ms (xgrammar 3-52 ms, paid per request without a cache) and
has no dependencies, where xgrammar pulls in triton (~1 GB) on a CPU server; outlines-core handles regular
languages only (no arbitrary JSON for json_object) and compiles in 11-48 ms.

JSON is generated compact (no optional whitespace): the small model cannot then wander into whitespace forever,
and a newline (the shipped model's default stop string is a blank line) never appears outside a string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch
from torch import Tensor

JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "coerce_one_of": True}


class GrammarError(ValueError):
    """The request's schema, regex or choices do not make a grammar (a 400 naming `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class GrammarSpec:
    """What a request asks to constrain: kind "json_schema" (source: a schema dict), "regex" (a pattern) or
    "choice" (a list of strings); `param` names the request field it came from (for errors)."""

    kind: str
    source: Any
    param: str


class Grammars:
    """llguidance's view of one tokenizer (built once: ~1 s for a large vocabulary) and grammar compilation."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token: int) -> None:
        self.vocab_size = vocab_size
        # llguidance needs every id the tokenizer can produce; a remapped fairseq tokenizer has aliases above the
        # model's vocabulary (mapped to <unk> after encoding), which masks then cut off at vocab_size
        self.n_vocab = max(vocab_size, len(hf_tokenizer))
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=self.n_vocab, eos_token=eos_token)

    def compile(self, spec: GrammarSpec) -> str:
        """The llguidance grammar of `spec`, validated against the vocabulary. Raises GrammarError."""
        if spec.kind == "json_schema":
            try:
                grammar = llguidance.LLMatcher.grammar_from_json_schema(spec.source, defaults=JSON_OPTIONS)
            except ValueError as exc:
                raise GrammarError(f"{spec.param}: not a usable JSON schema: {exc}", spec.param) from exc
        elif spec.kind == "regex":
            grammar = llguidance.LLMatcher.grammar_from_regex(spec.source)
        elif spec.kind == "choice":
            alternatives = " | ".join(json.dumps(choice) for choice in spec.source)  # lark string literals
            grammar = llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}\n")
        else:
            raise ValueError(f"unknown grammar kind {spec.kind!r}")
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if failed:
            raise GrammarError(f"{spec.param}: {messages[0]}", spec.param)
        return grammar

    def matcher(self, grammar: str) -> TokenMatcher:
        return TokenMatcher(llguidance.LLMatcher(self.tokenizer, grammar, log_level=0), self.n_vocab)


class TokenMatcher:
    """One constrained sequence's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._bitmask = torch.empty((vocab_size + 31) // 32, dtype=torch.int32)  # 32 tokens per int32 word
        # a matcher in error (grammars are validated before queuing, so only past a resource limit) allows eos
        # only and refuses it: that request fails alone, the batch goes on

    def allowed_bits(self) -> Tensor:
        """The tokens allowed next as a bitmask ((V + 31) // 32,) int32: bit j of word i is token 32 i + j."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        return self._bitmask

    def consume(self, token: int) -> bool:
        """Advance past a sampled token; False if the grammar refuses it (then the matcher is in error)."""
        return bool(self._matcher.consume_token(token))

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (not even eos): the output is done."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str:
        return str(self._matcher.get_error())


_BITS = torch.arange(32, dtype=torch.int32)  # (32,)


def unpack_bitmask(bits: Tensor, vocab_size: int) -> Tensor:
    """Bitmask words (R, W) int32 -> allowed tokens (R, vocab_size) bool."""
    allowed = (bits[:, :, None] >> _BITS) & 1  # (R, W, 32)
    return allowed.reshape(bits.shape[0], -1)[:, :vocab_size].bool()


def allowed_rows(matchers: Sequence[TokenMatcher | None], vocab_size: int, device: torch.device) -> list[Tensor | None]:
    """One (V,) bool mask per row for the constrained rows, None for the free ones (the engine's `allowed`)."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    out: list[Tensor | None] = [None] * len(matchers)
    if not rows:
        return out
    bits = torch.stack([matchers[i].allowed_bits() for i in rows])  # (R, W); type: ignore[union-attr]
    masks = unpack_bitmask(bits, vocab_size).to(device)  # (R, V)
    for k, i in enumerate(rows):
        out[i] = masks[k]
    return out


def allowed_rows_reference(matchers: Sequence[TokenMatcher | None], vocab_size: int) -> list[Tensor | None]:
    """The slow twin of `allowed_rows`: each bit read one by one."""
    out: list[Tensor | None] = []
    for matcher in matchers:
        if matcher is None:
            out.append(None)
            continue
        words = matcher.allowed_bits().tolist()
        mask = torch.tensor([bool((words[t // 32] >> (t % 32)) & 1) for t in range(vocab_size)])
        out.append(mask)
    return out
