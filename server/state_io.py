"""A recurrent state as a flat dict of named tensors and back: device moves, private copies and files.

Works on any dataclass state (tnn.model's TnnState today) without knowing its layout: tensor fields become one
entry, tuple/list-of-tensor fields one entry per item (`layers.0`, `layers.1`, ...). Rebuilding takes a
template state of the same model (`model.empty_state(1)`) for the structure; a dict that does not fit it
(another model, another layout) is refused with the names and shapes that differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
from torch import Tensor

State = TypeVar("State")


def state_to_tensors(state: Any) -> dict[str, Tensor]:
    """{name: tensor} of every tensor in `state` (the tensors themselves, not copies)."""
    if not dataclasses.is_dataclass(state):
        raise TypeError(f"expected a dataclass state, got {type(state).__name__}")
    flat: dict[str, Tensor] = {}
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        if isinstance(value, Tensor):
            flat[field.name] = value
        elif isinstance(value, tuple | list) and all(isinstance(v, Tensor) for v in value):
            for i, item in enumerate(value):
                flat[f"{field.name}.{i}"] = item
    return flat


def state_from_tensors(tensors: dict[str, Tensor], like: State) -> State:
    """A state shaped like `like` (any batch size) whose tensors are `tensors` (used as given, not copied)."""
    expected = state_to_tensors(like)
    if set(tensors) != set(expected):
        raise ValueError(f"state tensors {sorted(tensors)} do not match this model's {sorted(expected)}")
    for name, tensor in tensors.items():
        template = expected[name]
        if tensor.shape[1:] != template.shape[1:] or tensor.dtype != template.dtype:
            raise ValueError(
                f"state tensor {name}: {tuple(tensor.shape)} {tensor.dtype}, this model needs "
                f"(B, {', '.join(map(str, template.shape[1:]))}) {template.dtype}"
            )
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(like):  # type: ignore[arg-type]
        value = getattr(like, field.name)
        if isinstance(value, Tensor):
            changes[field.name] = tensors[field.name]
        elif isinstance(value, tuple | list) and all(isinstance(v, Tensor) for v in value):
            changes[field.name] = type(value)(tensors[f"{field.name}.{i}"] for i in range(len(value)))
    return dataclasses.replace(like, **changes)  # type: ignore[type-var]


def copy_state(state: State, device: torch.device, like: State) -> State:
    """A private copy of `state` on `device` (never sharing storage with the original)."""
    tensors = {name: t.to(device, copy=True) for name, t in state_to_tensors(state).items()}
    return state_from_tensors(tensors, like)
