"""The compiled decode steps' tie to their eager twin, shared by the AOTInductor and native-kernel tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tnn.model.tnn import TnnLM, TnnState


def random_pool(model: TnnLM, slots: int, scale: float = 1.0) -> TnnState:
    """A state pool of `slots` rows drawn at random (every term of the update counts)."""
    generator = torch.Generator().manual_seed(2)
    pool = model.empty_state(slots)
    for layer in pool.layers:
        layer.copy_(torch.randn(layer.shape, generator=generator, dtype=layer.dtype) * scale)
    return pool


def assert_steps_like_eager(
    model: TnnLM, native: Callable[[Tensor, TnnState], Tensor], pool: TnnState, batch: int, steps: int, tolerance: float
) -> None:
    """`steps` steps of rows [0, batch) of `pool` with `native` and with the eager step from the same state and
    tokens: logits and state within `tolerance` of the eager ones (relative to their largest entry), the rows
    past `batch` untouched."""
    eager_pool = pool
    native_pool = pool.clone()
    tokens = torch.randint(0, model.config.vocab_size, (batch,), generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        for _ in range(steps):
            expected, _ = model.step(tokens, eager_pool.rows(0, batch))
            actual = native(tokens, native_pool.rows(0, batch))
            assert actual.shape == (batch, model.config.vocab_size)
            assert (actual - expected).abs().max() <= tolerance * expected.abs().max()
            tokens = expected.argmax(-1)
    for got, want in zip(native_pool.layers, eager_pool.layers, strict=True):
        assert (got[:batch] - want[:batch]).abs().max() <= tolerance * want[:batch].abs().max()
        assert torch.equal(got[batch:], want[batch:])  # rows outside the step untouched
