"""The draw of tnn.model.sampling as a native kernel (model/sampler.c, loaded by tnn.model.native_lib), in one
call for the batch: `native_draw` from probabilities (per row the floor that top-k, top-p and min-p keep, found
by a radix select instead of a sort, and the exponential race among the kept tokens), and `native_sample` from the
logits themselves (per row the finite check, greedy argmax or the tempered softmax, then the same draw): the
common case, with no (B, V) torch intermediates and no tensor at all: its results come back as host lists.

The torch twins (`tnn.model.sampling._draw_torch` after torch's softmax, and `sample_reference`) draw the same
tokens (tests/model/test_sampling.py); they serve where the kernel cannot be built, off the CPU, or for logits
that are not float32.
"""

from __future__ import annotations

import array
import ctypes
import functools
import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tnn.model.native_lib import sampler_library


def _address(values: array.array) -> ctypes.c_void_p:
    """The address of an array's items (array.array: 5x cheaper to fill from a list than a ctypes array); the
    caller keeps the array alive across the call."""
    return ctypes.c_void_p(values.buffer_info()[0])


class _Scratch(threading.local):
    """The kernels' work space, kept between calls (per thread: two threads may sample at once)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0, dtype=torch.float32)

    def at_least(self, floats: int) -> Tensor:
        if self.buffer.numel() < floats:
            self.buffer = torch.empty(floats, dtype=torch.float32)
        return self.buffer


_SCRATCH = _Scratch()


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
    scratch = _SCRATCH.at_least(2 * vocab)
    per_row = array.array("q", top_k), array.array("f", top_p), array.array("f", min_p), array.array("Q", keys)
    library.tnn_draw(
        ctypes.c_void_p(probs.data_ptr()), ctypes.c_int64(rows), ctypes.c_int64(vocab), *map(_address, per_row),
        ctypes.c_void_p(tokens.data_ptr()), ctypes.c_void_p(scratch.data_ptr()),
    )  # fmt: skip
    return tokens


class _HostOutputs(threading.local):
    """`native_sample`'s output arrays, grown as needed and kept between calls (per thread)."""

    def __init__(self) -> None:
        self.tokens = array.array("q")
        self.finite = array.array("B")

    def at_least(self, rows: int) -> tuple[array.array, array.array]:
        if len(self.tokens) < rows:
            self.tokens = array.array("q", bytes(8 * rows))
            self.finite = array.array("B", bytes(rows))
        return self.tokens, self.finite


_HOST_OUTPUTS = _HostOutputs()


@functools.cache
def _sample_holding_lock() -> Callable[..., object]:
    """tnn_sample called with the interpreter lock held (ctypes.PyDLL). A call takes tens of microseconds a row;
    letting go of the lock for it let the HTTP thread in, and the engine thread then waited for the lock for up
    to a switch interval (the outbox's and PoolStep's notes tell the same story)."""
    library = sampler_library()
    assert library is not None, "check native_draw_available first"
    return ctypes.PyDLL(library._name).tnn_sample


def native_sample(
    logits: Tensor,
    temperature: Sequence[float],
    top_k: Sequence[int],
    top_p: Sequence[float],
    min_p: Sequence[float],
    keys: Sequence[int],
    library: ctypes.CDLL | None = None,
) -> tuple[list[int], list[bool]]:
    """logits (B, V) float32 CPU (check native_draw_available), per row temperature (0: greedy), top_k (0: off),
    top_p, min_p and race key -> per row the token and whether the row was finite (False: it held an infinity or
    a NaN, its token is meaningless), as host lists. The call holds the interpreter lock and makes no tensor
    (making or freeing one lets go of the lock). library: another build of sampler.c than `sampler_library`
    (tests)."""
    logits = logits.contiguous()
    rows, vocab = logits.shape
    tokens, finite = _HOST_OUTPUTS.at_least(rows)
    scratch = _SCRATCH.at_least(3 * vocab)
    per_row = (
        array.array("f", temperature), array.array("q", top_k), array.array("f", top_p), array.array("f", min_p),
        array.array("Q", keys),
    )  # fmt: skip
    entry = _sample_holding_lock() if library is None else ctypes.PyDLL(library._name).tnn_sample
    entry(
        ctypes.c_void_p(logits.data_ptr()), ctypes.c_int64(rows), ctypes.c_int64(vocab), *map(_address, per_row),
        _address(tokens), _address(finite), ctypes.c_void_p(scratch.data_ptr()),
    )  # fmt: skip
    return tokens[:rows].tolist(), [flag == 1 for flag in finite[:rows]]
