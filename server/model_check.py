"""Load-time checks of the model `tnn serve` is about to serve, beyond what loading refuses by itself (strict
config.json types and bounds, finite weights: tnn.model.load) and what the tokenizer checks when it is built (its
files parse, the chat template renders: tnn.server.tokenizer): every token id fits the embedding, and a short
prefill plus decode steps give finite logits. Each failure is a ValueError naming the file or the layer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from tnn.model import TnnLM
from tnn.model.tokenizer import check_tokenizer_dir
from tnn.server.tokenizer import ServerTokenizer

PROBE_TEXT = "Hello! How are you today?"
PROBE_STEPS = 2


def check_servable(model: TnnLM, tokenizer: ServerTokenizer | None, model_dir: Path) -> None:
    """`tokenizer` None: the server runs without one (--skip-tokenizer), the probe is token ids."""
    if tokenizer is None:
        probe = [i % model.config.vocab_size for i in range(2, 2 + len(PROBE_TEXT) // 4)]
    else:
        check_tokenizer_dir(model_dir, vocab_size=model.config.vocab_size)
        probe = tokenizer.encode(PROBE_TEXT, add_bos=True)
    if model.is_converted:
        check_finite_logits(model, probe, model_dir)
    else:  # an encoder (bidirectional: no recurrent form) serves embeddings from the parallel forward
        check_finite_forward(model, probe, model_dir)


@torch.inference_mode()
def check_finite_logits(model: TnnLM, tokens: list[int], model_dir: Path) -> None:
    """Prefill `tokens`, then decode PROBE_STEPS greedy tokens: every logit must be finite."""
    prompt = torch.tensor([tokens], dtype=torch.long, device=model.device)  # (1, L)
    logits, state = model.prefill(prompt)  # (1, V)
    _require_finite(logits, "prefill", model, prompt, model_dir)
    for step in range(PROBE_STEPS):
        logits, state = model.step(logits.argmax(dim=-1), state)  # (1,) -> (1, V)
        _require_finite(logits, f"decode step {step + 1}", model, prompt, model_dir)


@torch.inference_mode()
def check_finite_forward(model: TnnLM, tokens: list[int], model_dir: Path) -> None:
    """The parallel forward of `tokens` (what an encoder serves) must be finite at every layer."""
    prompt = torch.tensor([tokens], dtype=torch.long, device=model.device)  # (1, L)
    if any(not bool(torch.isfinite(hidden).all()) for hidden in model.hidden_states(prompt)):
        raise ValueError(f"{model_dir}: the forward of a {prompt.shape[1]}-token probe is non-finite; "
                         f"{_first_non_finite_layer(model, prompt)}")  # fmt: skip


def _require_finite(logits: Tensor, stage: str, model: TnnLM, prompt: Tensor, model_dir: Path) -> None:
    if bool(torch.isfinite(logits).all()):
        return
    raise ValueError(f"{model_dir}: the {stage} of a {prompt.shape[1]}-token probe gives non-finite logits; "
                     f"{_first_non_finite_layer(model, prompt)}")  # fmt: skip


def _first_non_finite_layer(model: TnnLM, prompt: Tensor) -> str:
    """Where it starts, from the parallel forward's per-layer outputs."""
    for index, hidden in enumerate(model.hidden_states(prompt)):  # [embeddings, layer 0, ..., last layer]
        if not bool(torch.isfinite(hidden).all()):
            return "the embeddings are non-finite" if index == 0 else f"layer {index - 1} is the first to output one"
    if not bool(torch.isfinite(model(prompt)).all()):  # (1, L, V)
        return "every layer's output is finite: the output head (final norm, tied projection) overflows"
    return "the parallel forward is finite: the recurrent (ETSC) state is at fault (ssm.safetensors)"
