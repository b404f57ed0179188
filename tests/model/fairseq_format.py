"""Synthetic fairseq checkpoints from native models (keys renamed by tnn.model.fairseq.fairseq_key), laid out like
the file fairseq's trainer writes (golden/README.md), for the laxtnn (ski-tnn) architectures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tnn.model import TnnLM
from tnn.model.fairseq import fairseq_key


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
