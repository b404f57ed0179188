"""Prefill and the realised kernel for any layer params, on the step's state layout (tnn.model.ssm.step)."""

from __future__ import annotations

from torch import Tensor

from tnn.model.ssm.etsc import SsmParams, etsc_prefill, ssm_kernel
from tnn.model.ssm.modal import ModalParams, modal_prefill
from tnn.model.ssm.step import pack_state, unpack_state

LayerParams = SsmParams | ModalParams


def realised_kernel(params: LayerParams, length: int) -> Tensor:
    """The kernel the recurrence applies, lags 0..length-1: (length, D) in the params' real dtype (for the reduced
    method the one its prefill keeps: do not modify it)."""
    if isinstance(params, SsmParams):
        return ssm_kernel(params, length)
    return params.kernel(length)


def ssm_prefill(v: Tensor, state: Tensor | None, params: LayerParams) -> tuple[Tensor, Tensor]:
    """Outputs and the new layer state for a block of L tokens, continuing from `state` (None: a fresh sequence).

    v: (B, L, D) real; state: (B, 2N + h, D) or None. Returns o (B, L, D) and a new (B, 2N + h, D) state
    (prefill may allocate: it is not the per-token path). No Python loop over positions.
    """
    modes, history = (None, None) if state is None else unpack_state(state, params.n_modes)
    if isinstance(params, SsmParams):
        o, new_modes = etsc_prefill(v, modes, params)
        return o, pack_state(new_modes, params.fir[None].expand(v.shape[0], -1, -1))
    o, new_modes, new_history = modal_prefill(v, modes, history, params)
    return o, pack_state(new_modes, new_history)
