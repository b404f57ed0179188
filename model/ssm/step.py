"""The recurrent state layout and the decode step, shared by every conversion method.

Layout, one real tensor per layer, batch first:
    state[:, :N]        real parts of the N modes        (B, N, D)
    state[:, N:2N]      imaginary parts                   (B, N, D)
    state[:, 2N:2N+h]   FIR history v_{t-1} .. v_{t-h}    (B, h, D), most recent first
float32 for float32/bf16/fp16 models, float64 for float64 models. ETSC has h = 0.

The step S <- lambda S + w u (u = v_{t-h}, or v_t without a head), o = Re sum_j S_j + sum_{i<h} fir_i v_{t-i}
updates the state in place. Two twins:
- `ssm_step`: eager in-place ops (the reference; one scratch (B, N, D) buffer for the old real plane);
- `ssm_step_fused`: the same maths as one torch.compile'd graph (update, output sum and history shift fused),
  compiled at the first step of each variant (dtype, head/no-head, device) with dynamic shapes, falling back to
  `ssm_step` with the reason logged where that fails. `fused_step_available()` says whether torch.compile can be
  set up at all; `fused_step_compiled()` whether a variant's compiled step has actually run.
`ssm_scan` (the step token by token) is the slow twin of every prefill.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


class Recurrence(Protocol):
    """What the step needs from a layer's params (tnn.model.ssm.etsc.SsmParams, tnn.model.ssm.modal.ModalParams)."""

    @property
    def poles(self) -> Tensor: ...  # (N, D) complex

    @property
    def weights(self) -> Tensor: ...  # (N, D) complex

    @property
    def fir(self) -> Tensor: ...  # (h, D) real

    @property
    def n_modes(self) -> int: ...


@dataclass(frozen=True)
class StepWeights:
    """A layer's recurrence as real planes in the state's dtype (built once per params, `step_weights`)."""

    pole_real: Tensor  # (N, D)
    pole_imag: Tensor  # (N, D)
    weight_real: Tensor  # (N, D)
    weight_imag: Tensor  # (N, D)
    fir: Tensor  # (h, D)

    @property
    def n_modes(self) -> int:
        return self.pole_real.shape[0]

    @property
    def fir_length(self) -> int:
        return self.fir.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.fir.dtype


def step_weights(params: Recurrence) -> StepWeights:
    real_dtype = params.fir.dtype
    return StepWeights(
        pole_real=params.poles.real.to(real_dtype).contiguous(),
        pole_imag=params.poles.imag.to(real_dtype).contiguous(),
        weight_real=params.weights.real.to(real_dtype).contiguous(),
        weight_imag=params.weights.imag.to(real_dtype).contiguous(),
        fir=params.fir.contiguous(),
    )


def state_rows(params: Recurrence) -> int:
    """Rows per channel of one layer's state: 2N + h."""
    return 2 * params.n_modes + params.fir.shape[0]


def zero_state(batch: int, params: Recurrence) -> Tensor:
    """(B, 2N + h, D) zeros in the params' real dtype: a fresh sequence."""
    return params.fir.new_zeros(batch, state_rows(params), params.fir.shape[1])


def pack_state(modes: Tensor, history: Tensor) -> Tensor:
    """(B, N, D) complex modes and (B, h, D) real history -> the layer state (B, 2N + h, D)."""
    return torch.cat([modes.real, modes.imag, history.to(modes.real.dtype)], dim=1).contiguous()


def unpack_state(state: Tensor, n_modes: int) -> tuple[Tensor, Tensor]:
    """The layer state (B, 2N + h, D) -> complex modes (B, N, D) (a new tensor) and the history view (B, h, D)."""
    modes = torch.complex(state[:, :n_modes], state[:, n_modes : 2 * n_modes])
    return modes, state[:, 2 * n_modes :]


def ssm_step(v: Tensor, state: Tensor, weights: StepWeights) -> Tensor:
    """One token, in place, eager: v (B, D) -> o (B, D); state (B, 2N + h, D) updated."""
    n, h = weights.n_modes, weights.fir_length
    real, imag, history = state[:, :n], state[:, n : 2 * n], state[:, 2 * n :]
    x = v.to(state.dtype)
    u = (history[:, h - 1] if h else x)[:, None]  # (B, 1, D): the input entering the modes
    old_real = real.clone()  # the scratch buffer: the imaginary update needs the old real part
    real.mul_(weights.pole_real).addcmul_(imag, weights.pole_imag, value=-1.0).addcmul_(weights.weight_real, u)
    imag.mul_(weights.pole_real).addcmul_(old_real, weights.pole_imag).addcmul_(weights.weight_imag, u)
    o = real.sum(1)  # (B, D)
    if h:
        o += weights.fir[0] * x
        if h > 1:
            o += (weights.fir[1:] * history[:, : h - 1]).sum(1)
            history[:, 1:] = history[:, :-1].clone()
        history[:, 0] = x
    return o.to(v.dtype)


def _fused_modes(v: Tensor, state: Tensor, pr: Tensor, pi: Tensor, wr: Tensor, wi: Tensor) -> Tensor:
    """The step without a FIR head as one graph for torch.compile: new planes written back, o = sum of real."""
    n = pr.shape[0]
    real, imag = state[:, :n], state[:, n : 2 * n]
    x = v.to(state.dtype)[:, None]
    new_real = pr * real - pi * imag + wr * x
    new_imag = pi * real + pr * imag + wi * x
    state.copy_(torch.cat([new_real, new_imag], dim=1))
    return new_real.sum(1).to(v.dtype)


def _fused_modes_and_head(
    v: Tensor, state: Tensor, pr: Tensor, pi: Tensor, wr: Tensor, wi: Tensor, fir: Tensor
) -> Tensor:
    """The step with a FIR head as one graph: modes fed v_{t-h}, taps on v_t and the history, history shifted."""
    n, h = pr.shape[0], fir.shape[0]
    real, imag, history = state[:, :n], state[:, n : 2 * n], state[:, 2 * n :]
    x = v.to(state.dtype)
    u = history[:, h - 1 :][:, :1]  # (B, 1, D): v_{t-h}
    new_real = pr * real - pi * imag + wr * u
    new_imag = pi * real + pr * imag + wi * u
    o = new_real.sum(1) + fir[0] * x + (fir[1:] * history[:, : h - 1]).sum(1)
    state.copy_(torch.cat([new_real, new_imag, x[:, None], history[:, : h - 1]], dim=1))
    return o.to(v.dtype)


@functools.cache
def _compiled(with_head: bool) -> Callable[..., Tensor] | None:
    fn = _fused_modes_and_head if with_head else _fused_modes
    try:
        return torch.compile(fn, dynamic=True, fullgraph=True)
    except Exception as exc:  # no compiler backend on this platform: the eager twin serves
        logger.warning("fused SSM step unavailable (%s: %s); using the eager in-place step", type(exc).__name__, exc)
        return None


_broken: set[tuple[bool, torch.dtype, str]] = set()  # (head, dtype, device) whose compiled step failed to build
_built: set[tuple[bool, torch.dtype, str]] = set()  # (head, dtype, device) whose compiled step has run


def ssm_step_fused(v: Tensor, state: Tensor, weights: StepWeights) -> Tensor:
    """`ssm_step` as one compiled graph (same signature and in-place contract); falls back to `ssm_step`, with
    the reason logged once, where compilation fails."""
    with_head = weights.fir_length > 0
    key = (with_head, state.dtype, state.device.type)
    fn = _compiled(with_head)
    if fn is None or key in _broken:
        return ssm_step(v, state, weights)
    args = (v, state, weights.pole_real, weights.pole_imag, weights.weight_real, weights.weight_imag)
    try:
        output = fn(*args, weights.fir) if with_head else fn(*args)
    except Exception as exc:  # inductor needs a C++ compiler on CPU; report once and keep serving
        _broken.add(key)
        logger.warning(
            "fused SSM step failed to compile (%s: %s); using the eager in-place step", type(exc).__name__, exc
        )
        return ssm_step(v, state, weights)
    _built.add(key)
    return output


def fused_step_available() -> bool:
    """Whether torch.compile can wrap the step on this platform. Not whether it compiles: each variant compiles
    at its first step and falls back to the eager step (logged) if that fails; see `fused_step_compiled`."""
    return _compiled(False) is not None


def fused_step_compiled(dtype: torch.dtype, device_type: str, with_head: bool | None = None) -> bool:
    """Whether the compiled step for states of `dtype` on `device_type` (with a FIR head, without, or either
    when None) has built and run: False before its first step and after a fallback to the eager step."""
    heads = (True, False) if with_head is None else (with_head,)
    return any((head, dtype, device_type) in _built for head in heads)


def ssm_scan(v: Tensor, state: Tensor, weights: StepWeights) -> tuple[Tensor, Tensor]:
    """Slow twin of every prefill: `ssm_step` token by token on a copy of `state`.
    v: (B, L, D) -> o (B, L, D), final state (B, 2N + h, D)."""
    state = state.clone()
    outputs = [ssm_step(v[:, i], state, weights) for i in range(v.shape[1])]
    return torch.stack(outputs, dim=1), state
