"""Attach the recurrence to a model: each layer's Toeplitz kernel becomes a diagonal SSM (tnn.model.ssm).

Methods: "reduced" (the default: an exact FIR head plus a few damped modes fitted to the kernel in and past n,
tnn.model.ssm.reduced), and the exact DFT-grid conversions "etsc-tail", "etsc-inclusive", "etsc"
(tnn.model.ssm.etsc). This is the part of conversion the server needs at load time; `tnn convert`
(tnn.convert) adds verification, the report and the atomic write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tnn.model.config import SsmConfig, SsmMethod
from tnn.model.ssm import LayerParams, etsc, require_stable
from tnn.model.ssm.reduced import (
    DEFAULT_FIR_LENGTH,
    DEFAULT_MAX_ORDER,
    DEFAULT_TOLERANCE,
    FIT_MULTIPLE,
    ReducedFit,
    fit_reduced,
)
from tnn.model.tnn import TnnLM, Tno
from tnn.model.toeplitz import fft_dtype

logger = logging.getLogger(__name__)

DEFAULT_LENGTH = 512
DEFAULT_METHOD: SsmMethod = "reduced"


@dataclass(frozen=True)
class ReducedOptions:
    """Knobs of the reduced-order fit (`tnn convert --tolerance --max-modes --fir-length --fit-multiple`)."""

    tolerance: float = DEFAULT_TOLERANCE  # max kernel error / max |kernel| per channel, over lags 0..K-1
    max_order: int = DEFAULT_MAX_ORDER  # model order cap per channel (a conjugate pair counts 2, a real pole 1)
    fir_length: int = DEFAULT_FIR_LENGTH  # exact FIR head h: lags 0..h-1
    fit_multiple: int = FIT_MULTIPLE  # fit lags 0..fit_multiple * n - 1
    # a channel that misses the tolerance within max_order: False keeps its best fit (the layer stays narrow);
    # True gives it its exact ETSC modes (exact to lag n, but the whole layer widens to n/2 + 1 slots)
    exact_fallback: bool = False


def conversion_refusal(model: TnnLM) -> str | None:
    """Why this model has no exact recurrent form, or None if it converts."""
    config = model.config
    if not config.causal:
        return "a bidirectional TNN sees future tokens: it has no causal recurrent form"
    if config.normalize:
        return "normalize=True divides by position-dependent row sums, which the diagonal SSM cannot express"
    return None


@torch.no_grad()
def layer_ssm(tno: Tno, length: int, method: SsmMethod, full_state: bool) -> LayerParams:
    """ETSC for one Tno in float64. Non-identity kernel activations and learned decays are handled by
    converting the final kernel a_k divided by gamma_eff^k, so that the poles keep the decay (spec §6.4)."""
    t, gamma = tno.undecayed_coefficients(length + 1)  # (n+1, D) lags 0..n, (D,)
    return etsc(t, gamma, method=method, full_state=full_state)


@torch.no_grad()
def layer_reduced(tno: Tno, length: int, options: ReducedOptions) -> ReducedFit:
    """The reduced-order fit of one Tno's realised kernel over lags 0..fit_multiple * n - 1, in float64."""
    kernel, _ = tno.coefficients(options.fit_multiple * length, torch.float64)  # (K, D)
    return fit_reduced(
        kernel,
        length=length,
        tolerance=options.tolerance,
        max_order=options.max_order,
        fir_length=options.fir_length,
        etsc_fallback=(lambda: layer_ssm(tno, length, "etsc-tail", full_state=False))
        if options.exact_fallback
        else None,
        max_radius=tno.decay_rate(torch.float64),
    )


def conversion_length(model: TnnLM, length: int | None) -> int:
    """The conversion length n: as asked, else the training length in the config, else 512."""
    n = length or model.config.train_length or DEFAULT_LENGTH
    if n < 2:
        raise ValueError(f"conversion length must be >= 2, got {n}")
    return n


def convert_layers(
    model: TnnLM,
    *,
    length: int | None = None,
    method: SsmMethod = DEFAULT_METHOD,
    full_state: bool = False,
    reduced: ReducedOptions | None = None,
) -> list[ReducedFit]:
    """Convert every layer in place and record the conversion in `model.config.ssm`.
    Returns the per-layer fits for the reduced method (empty for ETSC methods)."""
    refusal = conversion_refusal(model)
    if refusal is not None:
        raise ValueError(f"cannot convert this model: {refusal}")
    if full_state and method == "reduced":
        raise ValueError("full_state applies to the ETSC methods only")
    n = conversion_length(model, length)
    options = reduced or ReducedOptions()
    real_dtype = fft_dtype(model.dtype)
    fits: list[ReducedFit] = []
    for i, layer in enumerate(model.layers):
        tno = layer.gtu.tno
        if method == "reduced":
            fit = layer_reduced(tno, n, options)
            fits.append(fit)
            params: LayerParams = fit.params
            require_stable(params.poles, f"layer {i}")  # the fit guarantees it; never attach an unstable pole
            logger.info(
                "layer %d: %d modes, %d channel(s) over the tolerance (%d with exact fallback modes), kernel error "
                "%.2e inside n, %.2e past n",
                i,
                fit.n_modes,
                int(fit.missed.sum()),
                int(fit.fallback.sum()),
                fit.error_inside.max().item(),
                fit.error_past.max().item(),
            )
        else:
            params = layer_ssm(tno, n, method, full_state)
        tno.ssm = params.to(device=model.device, real_dtype=real_dtype)
    modes = tuple(layer.gtu.tno.ssm.n_modes for layer in model.layers)  # type: ignore[union-attr]
    model.config = model.config.replace(
        ssm=SsmConfig(
            method=method,
            length=n,
            modes=modes if method == "reduced" else modes[0],
            full_state=full_state,
            fir_length=options.fir_length if method == "reduced" else 0,
        )
    )
    return fits


def attach_ssm(
    model: TnnLM,
    *,
    length: int | None = None,
    method: SsmMethod = DEFAULT_METHOD,
    full_state: bool = False,
    reduced: ReducedOptions | None = None,
) -> TnnLM:
    """Convert every layer in place (`convert_layers`) and return the model."""
    convert_layers(model, length=length, method=method, full_state=full_state, reduced=reduced)
    return model
