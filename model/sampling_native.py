"""The truncated draw of tnn.model.sampling as a native kernel (model/sampler.c, loaded by
tnn.model.native_lib): per row the floor that top-k, top-p and min-p keep, found by quickselect instead of a
sort, and the exponential race among the kept tokens, in one call for the batch.

The torch twin (`tnn.model.sampling._draw_torch`) takes the same probabilities and race keys and draws the same
tokens (tests/model/test_sampling.py); it serves where the kernel cannot be built, off the CPU, or for
probabilities that are not float32.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor

from tnn.model.native_lib import sampler_library


def _float_array(values: Sequence[float]) -> ctypes.Array[ctypes.c_float]:
    return (ctypes.c_float * len(values))(*values)


def native_draw_available(probs: Tensor) -> bool:
    """Whether `native_draw` takes probs: float32 on the CPU, and the kernel built."""
    return probs.device.type == "cpu" and probs.dtype == torch.float32 and sampler_library() is not None


def native_draw(
    probs: Tensor, top_k: Sequence[int], top_p: Sequence[float], min_p: Sequence[float], keys: Sequence[int]
) -> Tensor:
    """probs (R, V) float32 CPU, per row top_k (0: off), top_p, min_p and the race's 64-bit key -> tokens (R,)
    int64."""
    library = sampler_library()
    assert library is not None, "check native_draw_available first"
    rows, vocab = probs.shape
    probs = probs.contiguous()
    tokens = torch.empty(rows, dtype=torch.int64)
    scratch = torch.empty(vocab, dtype=torch.float32)
    library.tnn_draw(
        ctypes.c_void_p(probs.data_ptr()), ctypes.c_int64(rows), ctypes.c_int64(vocab),
        (ctypes.c_int64 * rows)(*top_k), _float_array(top_p), _float_array(min_p),
        (ctypes.c_uint64 * rows)(*keys), ctypes.c_void_p(tokens.data_ptr()), ctypes.c_void_p(scratch.data_ptr()),
    )  # fmt: skip
    return tokens
