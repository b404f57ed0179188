"""Checks a converted model must pass before `tnn convert` writes it, and the past-n measurement.

All checks run on a float64 model (complex128 state) unless stated; the float32 check casts a copy.
Relative errors are max |got - expected| / max |expected| (the golden cases' metric) unless named rms.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from tnn.model.config import SsmMethod
from tnn.model.conversion import ReducedOptions, attach_ssm
from tnn.model.ssm import ModalParams, SsmParams, modal_kernel_from_powers, realised_kernel, ssm_kernel_from_modes
from tnn.model.tnn import TnnLM, TnnState, Tno
from tnn.model.toeplitz import fft_dtype

# the mode-sum twin materialises (lags, modes, channels) complex128; channels are summed in blocks of this many elements
MODE_SUM_BLOCK = 1 << 22


@dataclass(frozen=True)
class KernelCheck:
    """One layer: realised SSM kernel vs the TNN kernel a_k, float64."""

    layer: int
    rel_error: float  # lags 0..n-1, the realised kernel (what prefill uses)
    rel_error_modes: float  # lags 0..n-1, the kernel summed mode by mode from pole powers (what step uses)
    lag_n_rel_error: float  # lag n: |K_n - a_n| / max |a_k|; ~1 for "etsc" (spurious tap), ~0 for exact methods
    past_n_rel_error: float  # lags n+1..4n-1: max |K_k - a_k| / max |a_k| (the TNN defines a_k at every lag)
    tail_damping_median: float  # etsc-tail: median over channels of A = (gamma / rho)^n; 1 for the other methods
    modes: int  # state slots per channel in this layer
    fallback_channels: int  # reduced: channels that kept exact ETSC modes; 0 otherwise

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class LogitsCheck:
    """Teacher-forced recurrent logits (prefill of a prefix, then step) vs the parallel forward."""

    probe_length: int
    split: int  # prompt length prefilled; the rest is stepped token by token
    float64_rel_error: float
    float32_rel_error: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class PastNRow:
    """Recurrent (converted) vs parallel logits on one probe of `length` tokens, measured past position n."""

    method: str
    length: int
    max_rel_error: float  # over all positions (exact below n, so this is the past-n error)
    rms_rel_error: float  # ||got - expected|| / ||expected|| over positions n..length-2
    top1_agreement: float  # fraction of positions n..length-2 whose argmax token agrees
    nll_parallel: float  # next-token loss (nats) of the parallel model over positions n..length-2
    nll_recurrent: float  # the same for the converted model

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def relative_error(got: Tensor, expected: Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def _modes_kernel(params: SsmParams | ModalParams, length: int) -> Tensor:
    """The kernel from pole powers mode by mode, in channel blocks so that (length, N, block) stays small."""
    channels = params.poles.shape[1]
    block = max(1, MODE_SUM_BLOCK // max(1, length * params.n_modes))
    parts = []
    for start in range(0, channels, block):
        part = slice(start, start + block)
        if isinstance(params, ModalParams):
            sub = ModalParams(poles=params.poles[:, part], weights=params.weights[:, part], fir=params.fir[:, part])
            parts.append(modal_kernel_from_powers(sub, length))
            continue
        sub_etsc = SsmParams(
            poles=params.poles[:, part],
            weights=params.weights[:, part],
            modes=params.modes,
            period=params.period[:, part],
            decay=params.decay[part],
        )
        parts.append(ssm_kernel_from_modes(sub_etsc, length))
    return torch.cat(parts, dim=1)  # (length, D)


@torch.no_grad()
def check_kernel(layer: int, tno: Tno, n: int, *, fallback_channels: int = 0) -> KernelCheck:
    """Kernel reconstruction for lags 0..n-1, the lag-n tap and lags past n, in float64. `tno.ssm` must be
    float64."""
    params = tno.ssm
    assert params is not None and params.fir.dtype == torch.float64
    expected, _ = tno.coefficients(4 * n, torch.float64)  # (4n, D): a_k for lags 0..4n-1
    scale = expected[:n].abs().max()
    realised = realised_kernel(params, 4 * n)  # (4n, D)
    from_modes = _modes_kernel(params, n + 1)  # (n+1, D)
    damping = (tno.decay_rate(torch.float64) / params.decay) ** n if isinstance(params, SsmParams) else None
    return KernelCheck(
        layer=layer,
        rel_error=relative_error(realised[:n], expected[:n]),
        rel_error_modes=relative_error(from_modes[:n], expected[:n]),
        lag_n_rel_error=((from_modes[n] - expected[n]).abs().max() / scale).item(),
        past_n_rel_error=((realised[n + 1 :] - expected[n + 1 :]).abs().max() / scale).item(),
        tail_damping_median=1.0 if damping is None else damping.median().item(),
        modes=params.n_modes,
        fallback_channels=fallback_channels,
    )


def probe_tokens(vocab_size: int, length: int, seed: int = 0) -> Tensor:
    """(1, length) uniform random token ids from a seeded generator (no data needed to verify a conversion)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, length), generator=generator)


@torch.no_grad()
def teacher_forced(model: TnnLM, tokens: Tensor, split: int) -> tuple[Tensor, TnnState]:
    """prefill(tokens[:, :split]) then step through the rest: logits (B, L - split + 1, V) for positions
    split-1..L-1, and the state after the last token."""
    logits, state = model.prefill(tokens[:, :split])
    outputs = [logits]
    for i in range(split, tokens.shape[1]):
        logits, state = model.step(tokens[:, i], state)
        outputs.append(logits)
    return torch.stack(outputs, dim=1), state


@torch.no_grad()
def check_logits(model: TnnLM, tokens: Tensor, *, split: int) -> LogitsCheck:
    """Recurrent vs parallel logits on `tokens` (length <= n): prefill `split` tokens, step the rest.
    In the model's float64 and on a float32 copy (complex64 state); the float64 forward is the reference."""
    length = tokens.shape[1]
    expected = model(tokens)[:, split - 1 :]  # (1, L - split + 1, V)
    errors = []
    for dtype in (torch.float64, torch.float32):
        probe_model = model if dtype == model.dtype else _cast_copy(model, dtype)
        errors.append(relative_error(teacher_forced(probe_model, tokens, split)[0], expected))
    return LogitsCheck(probe_length=length, split=split, float64_rel_error=errors[0], float32_rel_error=errors[1])


def _cast_copy(model: TnnLM, dtype: torch.dtype) -> TnnLM:
    """A copy with weights in `dtype` and SSM params in the matching compute precision."""
    clone = copy.deepcopy(model).to(dtype)
    for layer in clone.layers:
        tno = layer.gtu.tno
        if tno.ssm is not None:
            tno.ssm = tno.ssm.to(real_dtype=fft_dtype(dtype))
    return clone


@torch.no_grad()
def past_n_comparison(
    model: TnnLM,
    *,
    methods: tuple[SsmMethod, ...],
    length: int,
    full_state: bool,
    multiples: tuple[int, ...] = (2, 4),
    tokens: Tensor | None = None,
    reduced: ReducedOptions | None = None,
    converted: TnnLM | None = None,
) -> list[PastNRow]:
    """For each method and each probe of multiple * n tokens: recurrent (teacher-forced) vs parallel logits.

    tokens: (B, >= max(multiples) * n) probe; default one row of seeded uniform random ids.
    converted: a model already converted with one of `methods` (at `length`), used for that method as it is (the
    reduced fit is the slow one: it runs once per conversion). Every other method converts a copy of `model`;
    the model itself is not modified.
    """
    longest = max(multiples) * length
    if tokens is None:
        tokens = probe_tokens(model.config.vocab_size, longest, seed=1)
    tokens = tokens[:, :longest]
    if tokens.shape[1] < longest:
        raise ValueError(f"the probe needs {longest} tokens, got {tokens.shape[1]}")
    expected = model(tokens)  # (B, 4n, V) parallel, TNN kernel at every lag
    rows = []
    done = converted.config.ssm if converted is not None else None
    for method in methods:
        if converted is not None and done is not None and done.method == method and done.length == length:
            candidate = converted
        else:
            candidate = attach_ssm(
                copy.deepcopy(model),
                length=length,
                method=method,
                full_state=full_state and method != "reduced",
                reduced=reduced,
            )
        got, _ = candidate.recurrent_logits(tokens)  # (B, 4n, V), equal to prefill + step (tested)
        for multiple in multiples:
            size = multiple * length
            rows.append(past_n_row(method, got[:, :size], expected[:, :size], tokens[:, :size], length))
    return rows


def past_n_row(method: str, got: Tensor, expected: Tensor, tokens: Tensor, n: int) -> PastNRow:
    """Errors of recurrent logits `got` vs parallel `expected` (B, L, V); the next-token loss uses `tokens` (B, L)."""
    past_g, past_e = got[:, n:-1], expected[:, n:-1]  # positions n..L-2 predict tokens n+1..L-1
    targets = tokens[:, n + 1 :]
    return PastNRow(
        method=method,
        length=got.shape[1],
        max_rel_error=relative_error(got, expected),
        rms_rel_error=((past_g - past_e).norm() / past_e.norm()).item(),
        top1_agreement=(past_g.argmax(-1) == past_e.argmax(-1)).double().mean().item(),
        nll_parallel=_nll(past_e, targets),
        nll_recurrent=_nll(past_g, targets),
    )


def _nll(logits: Tensor, targets: Tensor) -> float:
    """Mean next-token cross-entropy in nats."""
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), targets.flatten()).item()
