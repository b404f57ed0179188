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
from tnn.model.ssm import (
    ModalParams,
    SsmParams,
    etsc,
    modal_kernel_from_powers,
    realised_kernel,
    ssm_kernel,
    ssm_kernel_from_modes,
)
from tnn.model.tnn import TnnLM, TnnState, Tno
from tnn.model.toeplitz import fft_dtype

# the mode-sum twin materialises (lags, modes, channels) complex128; channels are summed in blocks of this many elements
MODE_SUM_BLOCK = 1 << 22
# the mode-sum twin is evaluated at every lag below this, then at this many lags spread evenly over 0..n (every
# chunk of the fast kernel's power table holds several of them)
TWIN_HEAD_LAGS = 64
TWIN_SPREAD_LAGS = 65
RANDOM_PROBE = "uniform random token ids, seed 1"


@dataclass(frozen=True)
class KernelCheck:
    """One layer: realised SSM kernel vs the TNN kernel a_k, float64."""

    layer: int
    rel_error: float  # lags 0..n-1, the realised kernel (what prefill uses)
    rel_error_modes: float  # sampled lags 0..n-1 (`twin_lags`), the kernel summed mode by mode (what step uses)
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
    probe: str = RANDOM_PROBE  # where the tokens came from

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass(frozen=True)
class PastNKernel:
    """One method's kernel against the TNN's at and past the conversion length, the worst layer (float64)."""

    method: str
    modes: list[int]  # state slots per channel, per layer
    lag_n_rel_error: float  # |K_n - a_n| / max |a_k|
    past_n_rel_error: float  # lags n+1..4n-1

    def to_dict(self) -> dict[str, float | str | list[int]]:
        return asdict(self)


@dataclass(frozen=True)
class TeacherForced:
    """One probe through the parallel forward and, teacher-forced, through the recurrent model: a prefill of
    `split` tokens, `stepped` single steps, then a prefill of the rest continuing from the stepped state (each
    position's logits by the path that computed it)."""

    tokens: Tensor  # (1, L)
    parallel: Tensor  # (1, L, V)
    recurrent: Tensor  # (1, L, V)
    split: int
    stepped: int


def relative_error(got: Tensor, expected: Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def twin_lags(n: int) -> Tensor:
    """The lags 0..n where the mode-sum twin is evaluated: every lag below TWIN_HEAD_LAGS (the FIR head and its
    boundary), TWIN_SPREAD_LAGS spread evenly over 0..n, and n. (L,) int64, sorted."""
    spread = torch.linspace(0, n, TWIN_SPREAD_LAGS).round().long()
    return torch.cat([torch.arange(min(n, TWIN_HEAD_LAGS)), spread]).unique()


def _modes_kernel(params: SsmParams | ModalParams, lags: Tensor) -> Tensor:
    """The kernel at `lags` from pole powers mode by mode, in channel blocks so that (L, N, block) stays small."""
    channels = params.poles.shape[1]
    block = max(1, MODE_SUM_BLOCK // max(1, lags.shape[0] * params.n_modes))
    parts = []
    for start in range(0, channels, block):
        part = slice(start, start + block)
        if isinstance(params, ModalParams):
            sub = ModalParams(poles=params.poles[:, part], weights=params.weights[:, part], fir=params.fir[:, part])
            parts.append(modal_kernel_from_powers(sub, lags))
            continue
        sub_etsc = SsmParams(
            poles=params.poles[:, part],
            weights=params.weights[:, part],
            modes=params.modes,
            period=params.period[:, part],
            decay=params.decay[part],
        )
        parts.append(ssm_kernel_from_modes(sub_etsc, lags))
    return torch.cat(parts, dim=1)  # (L, D)


def kernel_reference(tno: Tno, n: int) -> Tensor:
    """The TNN's own kernel a_k for lags 0..4n-1 (4n, D), float64: what every kernel check compares against."""
    return tno.coefficients(4 * n, torch.float64)[0]


@torch.no_grad()
def check_kernel(
    layer: int, tno: Tno, n: int, *, fallback_channels: int = 0, expected: Tensor | None = None
) -> KernelCheck:
    """Kernel reconstruction for lags 0..n-1, the lag-n tap and lags past n, in float64: the realised kernel at
    every lag, its mode-by-mode twin at `twin_lags(n)`. `tno.ssm` must be float64. expected: `kernel_reference`."""
    params = tno.ssm
    assert params is not None and params.fir.dtype == torch.float64
    expected = kernel_reference(tno, n) if expected is None else expected  # (4n, D): a_k for lags 0..4n-1
    scale = expected[:n].abs().max()
    realised = realised_kernel(params, 4 * n)  # (4n, D)
    lags = twin_lags(n)  # (S,), the last is n
    from_modes = _modes_kernel(params, lags)  # (S, D)
    damping = (tno.decay_rate(torch.float64) / params.decay) ** n if isinstance(params, SsmParams) else None
    return KernelCheck(
        layer=layer,
        rel_error=relative_error(realised[:n], expected[:n]),
        rel_error_modes=((from_modes[:-1] - expected[lags[:-1]]).abs().max() / scale).item(),
        lag_n_rel_error=((from_modes[-1] - expected[n]).abs().max() / scale).item(),
        past_n_rel_error=((realised[n + 1 :] - expected[n + 1 :]).abs().max() / scale).item(),
        tail_damping_median=1.0 if damping is None else damping.median().item(),
        modes=params.n_modes,
        fallback_channels=fallback_channels,
    )


@torch.no_grad()
def exact_kernels_past_n(
    tno: Tno, n: int, *, methods: tuple[SsmMethod, ...], full_state: bool, expected: Tensor
) -> dict[str, tuple[int, float, float]]:
    """One layer converted with each exact (ETSC) method in `methods` (one FFT each; `tno` is not modified):
    method -> (modes, |K_n - a_n| / max |a|, the same over lags n+1..4n-1). expected: `kernel_reference`."""
    scale = expected[:n].abs().max()
    t, gamma = tno.undecayed_coefficients(n + 1)  # (n+1, D), (D,)
    rows = {}
    for method in methods:
        params = etsc(t, gamma, method=method, full_state=full_state)
        realised = ssm_kernel(params, 4 * n)  # (4n, D)
        lag_n = ((realised[n] - expected[n]).abs().max() / scale).item()
        rows[method] = (params.n_modes, lag_n, ((realised[n + 1 :] - expected[n + 1 :]).abs().max() / scale).item())
    return rows


def past_n_kernels(
    method: str, checks: list[KernelCheck], exact: list[dict[str, tuple[int, float, float]]]
) -> list[PastNKernel]:
    """The converted `method` (from its kernel `checks`) and each exact method of `exact` (per layer, from
    `exact_kernels_past_n`) at lag n and past it, the worst layer. The reduced fit is not redone for a comparison:
    it is listed only when it is the converted method."""
    rows = [
        PastNKernel(
            method,
            [k.modes for k in checks],
            max(k.lag_n_rel_error for k in checks),
            max(k.past_n_rel_error for k in checks),
        )
    ]
    for other in exact[0] if exact else {}:
        per_layer = [layer[other] for layer in exact]
        modes = [m for m, _, _ in per_layer]
        rows.append(PastNKernel(other, modes, max(e for _, e, _ in per_layer), max(e for _, _, e in per_layer)))
    return rows


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
def teacher_forced_passes(model: TnnLM, tokens: Tensor, *, split: int, steps: int) -> TeacherForced:
    """The parallel forward of `tokens` (1, L) and the recurrent logits of the same positions by prefill
    (tokens[:, :split]), `steps` single steps, then a prefill of the rest continuing from that state.
    One parallel and about one recurrent pass over L tokens serve the logits check (prefill + step, positions
    split-1 .. split+steps-1), the fidelity (every position) and the past-n row (positions n ..)."""
    stepped = max(0, min(steps, tokens.shape[1] - split))
    parallel = model(tokens)  # (1, L, V)
    head, state = model.recurrent_logits(tokens[:, :split])  # (1, split, V)
    outputs = [head]
    for i in range(split, split + stepped):
        logits, state = model.step(tokens[:, i], state)
        outputs.append(logits[:, None])  # (1, 1, V)
    if split + stepped < tokens.shape[1]:
        outputs.append(model.recurrent_logits(tokens[:, split + stepped :], state)[0])
    recurrent = torch.cat(outputs, dim=1)  # (1, L, V)
    return TeacherForced(tokens=tokens, parallel=parallel, recurrent=recurrent, split=split, stepped=stepped)


@torch.no_grad()
def check_logits(model: TnnLM, passes: TeacherForced) -> LogitsCheck:
    """Recurrent vs parallel logits at the positions of `passes` that the prefill ends and the steps compute
    (split-1 .. split+steps-1, all below n): in the model's float64 (from `passes`) and on a float32 copy
    (complex64 state, prefill + step again); the float64 forward is the reference."""
    split, end = passes.split, passes.split + passes.stepped
    expected = passes.parallel[:, split - 1 : end]  # (1, steps + 1, V)
    float64_error = relative_error(passes.recurrent[:, split - 1 : end], expected)
    probe_model = _cast_copy(model, torch.float32)
    float32_error = relative_error(teacher_forced(probe_model, passes.tokens[:, :end], split)[0], expected)
    return LogitsCheck(probe_length=end, split=split, float64_rel_error=float64_error, float32_rel_error=float32_error)


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


def past_n_row(
    method: str, got: Tensor, expected: Tensor, tokens: Tensor, n: int, *, probe: str = RANDOM_PROBE
) -> PastNRow:
    """Errors of recurrent logits `got` vs parallel `expected` (B, L, V); the next-token loss uses `tokens` (B, L);
    `probe` says where the tokens came from."""
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
        probe=probe,
    )


def _nll(logits: Tensor, targets: Tensor) -> float:
    """Mean next-token cross-entropy in nats."""
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), targets.flatten()).item()
