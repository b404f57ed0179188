"""Synthetic fairseq checkpoints from native models: the inverse of tnn.model.fairseq's key map, laid out like
the file fairseq's trainer writes (golden/README.md), for the laxtnn (ski-tnn) architectures."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from tnn.model import TnnLM

_INVERSE: list[tuple[str, str]] = [
    (r"^embed\.weight$", "decoder.embed_tokens.weight"),
    (r"^final_norm\.(weight|bias)$", r"decoder.layer_norm.\1"),
    (r"^embed_norm\.(weight|bias)$", r"decoder.layernorm_embedding.\1"),
    (r"^layers\.(\d+)\.gtu\.out_proj\.(weight|bias)$", r"decoder.layers.\1.self_attn.gtu.o.\2"),
    (r"^layers\.(\d+)\.gtu\.([uv]_proj)\.(weight|bias)$", r"decoder.layers.\1.self_attn.gtu.\2.\3"),
    (r"^layers\.(\d+)\.gtu\.tno\.(gamma|alphas|betas|conv_kernel)$", r"decoder.layers.\1.self_attn.gtu.toep.\2"),
    (
        r"^layers\.(\d+)\.gtu\.tno\.rpe\.pos_proj\.(weight|bias)$",
        r"decoder.layers.\1.self_attn.gtu.toep.rpe.pos_proj.\2",
    ),
    (
        r"^layers\.(\d+)\.gtu\.tno\.rpe\.layers\.(\d+)\.linear\.(weight|bias)$",
        r"decoder.layers.\1.self_attn.gtu.toep.rpe.layers.\2.2.\3",
    ),
    (
        r"^layers\.(\d+)\.gtu\.tno\.rpe\.out\.linear\.(weight|bias)$",
        r"decoder.layers.\1.self_attn.gtu.toep.rpe.out.2.\2",
    ),
    (r"^layers\.(\d+)\.glu\.(l[123])\.(weight|bias)$", r"decoder.layers.\1.glu.\2.\3"),
    (r"^mlm_head\.dense\.(weight|bias)$", r"encoder.lm_head.dense.\1"),
    (r"^mlm_head\.norm\.(weight|bias)$", r"encoder.lm_head.layer_norm.\1"),
    (r"^mlm_head\.bias$", "encoder.lm_head.bias"),
]


def fairseq_key(native: str) -> str:
    for pattern, template in _INVERSE:
        if re.match(pattern, native):
            return re.sub(pattern, template, native)
    raise KeyError(native)


def fairseq_checkpoint(model: TnnLM, args: dict[str, Any], *, encoder: bool = False) -> dict[str, Any]:
    """The trainer's dict: cfg['model'] = `args` (arch included), the state dict in float32 with fairseq names."""
    config = model.config
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().float().clone()
        if name.endswith("tno.gamma") and config.operator == "tnn":
            tensor = tensor.reshape(config.n_heads, 1, config.d_head)
        state[fairseq_key(name)] = tensor
    embed = state["decoder.embed_tokens.weight"]
    if encoder:
        prefix = "encoder.sentence_encoder."
        state = {(prefix + k.removeprefix("decoder.") if k.startswith("decoder.") else k): v for k, v in state.items()}
        state[prefix + "version"] = torch.tensor([3.0])
        state["encoder.lm_head.weight"] = embed
    else:
        state["decoder.version"] = torch.tensor([3.0])
        state["decoder.output_projection.weight"] = embed
    return {
        "args": None,
        "cfg": {"model": dict(args), "task": {"tokens_per_sample": config.train_length}},
        "model": state,
        "optimizer_history": [{"num_updates": 0}],
        "extra_state": {},
    }


def write(checkpoint: dict[str, Any], path: Path) -> Path:
    torch.save(checkpoint, path)
    return path
