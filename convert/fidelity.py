"""Fidelity of a converted model on real text: does the recurrent model pick the parallel model's tokens?

Teacher forcing in float64: the same token ids go through the parallel TNN (the reference, TNN kernel at every
lag) and the recurrent model (`TnnLM.recurrent_logits`: the converted kernel, equal to stepping token by token,
which tests/model ties together). Per position we compare
the next-token log-probabilities: top-1 agreement (argmax equal), the largest |log p_recurrent - log p_parallel|
over the whole vocabulary, and the bits/byte of the text under each. A held-out text beats random ids: random
tokens drive the model far from the inputs it was trained on, and say little about the tokens it picks on text.

Shapes: L tokens, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from tnn.model.tnn import TnnLM
from tnn.model.tokenizer import EOS_TOKEN, encode, eos_id, load_tokenizer

DEFAULT_EVAL_TOKENS = 1024  # tokens scored at most (the recurrent pass steps once per token)


@dataclass(frozen=True)
class TextFidelity:
    """Recurrent vs parallel next-token distributions over one text, float64."""

    source: str  # the text file, or "random token ids (seed 1)" when no text was available
    tokens: int  # positions compared
    bytes: int  # UTF-8 bytes those positions predict (0 for random ids: no bits/byte)
    top1_agreement: float
    max_abs_logprob_diff: float  # over every position and every vocabulary entry
    bits_per_byte_parallel: float
    bits_per_byte_recurrent: float

    @property
    def bits_per_byte_diff(self) -> float:
        return self.bits_per_byte_recurrent - self.bits_per_byte_parallel

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "bits_per_byte_diff": self.bits_per_byte_diff}


def text_tokens(model_dir: Path, text: str, *, max_tokens: int = DEFAULT_EVAL_TOKENS) -> tuple[Tensor, int]:
    """[eos, text ids...] (the text's first id in front when the tokenizer has no end-of-text token) cut to
    `max_tokens` + 1 ids, and the UTF-8 bytes of the text the predicted ids cover (counted by decoding them, so
    bits/byte stays honest when the text is cut). Returns (1, L) ids and that byte count."""
    tokenizer = load_tokenizer(model_dir)
    ids = encode(tokenizer, text)
    if tokenizer.token_to_id(EOS_TOKEN) is not None:
        ids = [eos_id(tokenizer), *ids]
    ids = ids[: max_tokens + 1]
    if len(ids) < 2:
        raise ValueError(f"the evaluation text has {len(ids)} token(s): need at least 2")
    covered = tokenizer.decode(ids[1:], skip_special_tokens=False)
    return torch.tensor([ids]), len(covered.encode("utf-8"))  # (1, L)


@torch.no_grad()
def measure_fidelity(parallel: TnnLM, converted: TnnLM, tokens: Tensor, n_bytes: int, *, source: str) -> TextFidelity:
    """Compare `converted` (recurrent, float64) with `parallel` (its forward, float64) on `tokens` (1, L).
    n_bytes: UTF-8 bytes of the text tokens[:, 1:] cover (0: no bits/byte, e.g. random ids)."""
    if parallel.dtype != torch.float64 or converted.dtype != torch.float64:
        raise ValueError("fidelity is measured in float64: load both models with dtype=torch.float64")
    expected = parallel(tokens)  # (1, L, V)
    got = converted.recurrent_logits(tokens)[0]  # (1, L, V)
    return fidelity_from_logits(expected, got, tokens, n_bytes, source=source)


def fidelity_from_logits(expected: Tensor, got: Tensor, tokens: Tensor, n_bytes: int, *, source: str) -> TextFidelity:
    """The fidelity numbers from float64 logits already computed: `expected` (1, L, V) parallel, `got` (1, L, V)
    recurrent, on `tokens` (1, L); n_bytes as in `measure_fidelity`."""
    if expected.dtype != torch.float64 or got.dtype != torch.float64:
        raise ValueError("fidelity is measured in float64 logits")
    expected = torch.log_softmax(expected[:, :-1], dim=-1)  # (1, L-1, V)
    got = torch.log_softmax(got[:, :-1], dim=-1)  # (1, L-1, V)
    targets = tokens[:, 1:, None]  # (1, L-1, 1)
    nats_parallel = -expected.gather(-1, targets).sum().item()
    nats_recurrent = -got.gather(-1, targets).sum().item()
    per_byte = math.log(2) * n_bytes if n_bytes else math.nan
    return TextFidelity(
        source=source,
        tokens=int(targets.numel()),
        bytes=n_bytes,
        top1_agreement=(got.argmax(-1) == expected.argmax(-1)).double().mean().item(),
        max_abs_logprob_diff=(got - expected).abs().max().item(),
        bits_per_byte_parallel=nats_parallel / per_byte,
        bits_per_byte_recurrent=nats_recurrent / per_byte,
    )
