"""Attach the ETSC recurrence to a model: each layer's Toeplitz kernel becomes a diagonal SSM (tnn.model.ssm).

This is the part of conversion the server needs at load time; `tnn convert` (tnn.convert) adds verification,
the report and the atomic write.
"""

from __future__ import annotations

import torch

from tnn.model.config import SsmConfig, SsmMethod
from tnn.model.ssm import SsmParams, etsc
from tnn.model.tnn import TnnLM, Tno
from tnn.model.toeplitz import fft_dtype

DEFAULT_LENGTH = 512
DEFAULT_METHOD: SsmMethod = "etsc-tail"


def conversion_refusal(model: TnnLM) -> str | None:
    """Why this model has no exact recurrent form, or None if it converts."""
    config = model.config
    if not config.causal:
        return "a bidirectional TNN sees future tokens: it has no causal recurrent form"
    if config.normalize:
        return "normalize=True divides by position-dependent row sums, which the diagonal SSM cannot express"
    return None


@torch.no_grad()
def layer_ssm(tno: Tno, length: int, method: SsmMethod, full_state: bool) -> SsmParams:
    """ETSC for one Tno in float64. Non-identity kernel activations and learned decays are handled by
    converting the final kernel a_k divided by gamma_eff^k, so that the poles keep the decay (spec §6.4)."""
    t, gamma = tno.undecayed_coefficients(length + 1)  # (n+1, D) lags 0..n, (D,)
    return etsc(t, gamma, method=method, full_state=full_state)


def conversion_length(model: TnnLM, length: int | None) -> int:
    """The conversion length n: as asked, else the training length in the config, else 512."""
    n = length or model.config.train_length or DEFAULT_LENGTH
    if n < 2:
        raise ValueError(f"conversion length must be >= 2, got {n}")
    return n


def attach_ssm(
    model: TnnLM,
    *,
    length: int | None = None,
    method: SsmMethod = DEFAULT_METHOD,
    full_state: bool = False,
) -> TnnLM:
    """Convert every layer in place and record the conversion in `model.config.ssm`. Returns the model."""
    refusal = conversion_refusal(model)
    if refusal is not None:
        raise ValueError(f"cannot convert this model: {refusal}")
    n = conversion_length(model, length)
    real_dtype = fft_dtype(model.dtype)
    for layer in model.layers:
        params = layer_ssm(layer.gtu.tno, n, method, full_state)
        layer.gtu.tno.ssm = params.to(device=model.device, real_dtype=real_dtype)
    modes = model.layers[0].gtu.tno.ssm.n_modes  # type: ignore[union-attr]
    model.config = model.config.replace(ssm=SsmConfig(method=method, length=n, modes=modes, full_state=full_state))
    return model
