"""Next-token sampling for a batch of sequences, each with its own parameters and seeded generator.

Order per row: logit bias; repetition penalty (prompt and output tokens), presence/frequency penalties (output
tokens); the allowed-token mask (grammar-constrained decoding: disallowed tokens get -inf); temperature; top-k and
top-p on that distribution, then min-p (vLLM semantics: keep tokens at least `min_p` times as likely as the most
likely one); then an exponential race among the kept tokens (argmax p_v / E_v, with E_v ~ Exp(1) a function of
the row's key, drawn from its generator, and the token: SplitMix64), which is a draw from the filtered
distribution. Temperature 0 is greedy. Everything runs in float32 (the race's ratios in float64).

`sample` takes the plain rows (no logit bias, penalty or allowed mask; float32 logits on the CPU) in one native
call from the logits (`_sample_native`: tnn_sample in model/sampler.c, its softmax torch's up to rounding). For the
other rows it does only the work each row asks for, batched over the rows that ask: greedy rows take an argmax;
sampled rows get a probability floor from top-k/top-p/min-p (a native radix select, or in the torch twin a
top-k window, sorting the whole row only when a nucleus is wider than it) and the race, in which the native
kernel takes logarithms only for the few tokens that could still win; penalties touch only penalised rows.
`sample_reference` is its slow twin (every row through every stage, a full sort, each row alone): the same
tokens for the same seeds. A row whose logits are not finite, or whose allowed mask leaves no token, is
reported, never sampled (the caller fails that request alone).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tnn.model.sampling_native import native_draw, native_draw_available, native_sample

GREEDY_BELOW = 1e-5  # temperatures below this are treated as greedy (division would overflow)
MAX_LOGIT_BIAS = 100.0  # OpenAI's bound on logit_bias values
SERIAL_SAMPLING_ELEMENTS = 1 << 20  # below this many logits the sampler runs on one thread (`serial_below`)
TOP_P_WINDOW = 256  # top-p rows first look at this many most likely tokens (a top-k, 10x cheaper than a sort)

RowTensors = Tensor | Sequence[Tensor | None]  # (B, V), or one (V,) tensor per row with None for "none"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI names; top_k, min_p and repetition_penalty as in vLLM/HF)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already in prompt or output
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = None  # token id -> added to its logit before everything else
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("temperature", 0.0 <= self.temperature <= 2.0, "in [0, 2]"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 2.0, "in (0, 2]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "in [-2, 2]"),
        ]
        for name, ok, allowed in checks:
            if not ok:  # NaN fails every comparison, so it lands here too
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        for token, bias in (self.logit_bias or {}).items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"logit_bias keys must be token ids >= 0, got {token!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias!r} for token {token}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def truncated(self) -> bool:
        """Whether top-k or top-p cut the distribution (the only stages that need a sort)."""
        return self.top_k > 0 or self.top_p < 1.0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A generator seeded for this request, or None (the global RNG) without a seed."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


class SampleResult:
    """One token per row, and per row whether it is meaningful: tensors (B,), or host lists where the native
    sampler drew the batch (`from_host`: the tensors are made only if asked for)."""

    def __init__(self, tokens: Tensor, finite: Tensor, any_allowed: Tensor) -> None:
        self._tensors: tuple[Tensor, Tensor, Tensor] | None = (tokens, finite, any_allowed)
        self._host: tuple[list[int], list[bool], list[bool]] | None = None

    @classmethod
    def from_host(cls, tokens: list[int], finite: list[bool]) -> SampleResult:
        """A result drawn on the host with no allowed mask (every row has tokens to choose from)."""
        result = cls.__new__(cls)
        result._tensors = None
        result._host = (tokens, finite, [True] * len(tokens))
        return result

    def _as_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._tensors is None:
            assert self._host is not None
            tokens, finite, allowed = self._host
            self._tensors = (torch.tensor(tokens, dtype=torch.int64), torch.tensor(finite, dtype=torch.bool),
                             torch.tensor(allowed, dtype=torch.bool))  # fmt: skip
        return self._tensors

    @property
    def tokens(self) -> Tensor:  # (B,) int64
        return self._as_tensors()[0]

    @property
    def finite(self) -> Tensor:  # (B,) bool: False where the logits had NaN/inf (token is meaningless there)
        return self._as_tensors()[1]

    @property
    def any_allowed(self) -> Tensor:  # (B,) bool: False where the allowed mask left no token (meaningless there)
        return self._as_tensors()[2]

    def on_host(self) -> tuple[list[int], list[bool], list[bool]]:
        """tokens, finite and any_allowed as lists: on a GPU in one device-to-host copy; on the CPU read directly
        (stacking them to copy once costs 3x the reads)."""
        if self._host is not None:
            return self._host
        tokens, finite, any_allowed = self._as_tensors()
        if tokens.device.type == "cpu":
            return tokens.tolist(), finite.tolist(), any_allowed.tolist()
        host = torch.stack([tokens, finite.long(), any_allowed.long()]).tolist()
        return host[0], [bool(ok) for ok in host[1]], [bool(ok) for ok in host[2]]


def _column(values: list[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]  # (B, 1)


def _rows_of(values: RowTensors | None, rows: list[int], vocab: int, dtype: torch.dtype, device: torch.device):
    """The (R, V) rows `rows` of a (B, V) tensor or per-row list (None entries: zeros); None stays None."""
    if values is None:
        return None
    if isinstance(values, Tensor):
        return values[torch.tensor(rows, device=values.device)] if len(rows) < values.shape[0] else values
    zeros = torch.zeros(vocab, dtype=dtype, device=device)
    return torch.stack([zeros if values[i] is None else values[i].to(dtype) for i in rows])  # type: ignore[union-attr]


def apply_penalties(
    logits: Tensor,
    params: Sequence[SamplingParams],
    output_counts: Tensor | None,
    prompt_mask: Tensor | None,
) -> Tensor:
    """logits (B, V) float32; output_counts (B, V) counts of generated tokens; prompt_mask (B, V) bool."""
    if output_counts is None and prompt_mask is None:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool)
    if prompt_mask is not None:
        seen |= prompt_mask
    if output_counts is not None:
        seen |= output_counts > 0
    repetition = _column([p.repetition_penalty for p in params], logits)
    penalised = _cap(torch.where(logits > 0, logits / repetition, logits * repetition))
    logits = torch.where(seen, penalised, logits)
    if output_counts is not None:
        counts = output_counts.to(logits.dtype)
        presence = _column([p.presence_penalty for p in params], logits)
        frequency = _column([p.frequency_penalty for p in params], logits)
        logits = logits - presence * (counts > 0).to(logits.dtype) - frequency * counts
    return logits


def add_logit_bias(logits: Tensor, params: Sequence[SamplingParams]) -> Tensor:
    """logits (B, V) plus each row's logit_bias, one indexed add for the whole batch."""
    rows, tokens, biases = [], [], []
    for row, p in enumerate(params):
        for token, bias in (p.logit_bias or {}).items():
            rows.append(row)
            tokens.append(token)
            biases.append(bias)
    if not rows:
        return logits
    vocab = logits.shape[-1]
    if max(tokens) >= vocab:
        raise ValueError(f"logit_bias token id {max(tokens)} is outside the vocabulary [0, {vocab})")
    index = (torch.tensor(rows, device=logits.device), torch.tensor(tokens, device=logits.device))
    return logits.index_put(index, torch.tensor(biases, dtype=logits.dtype, device=logits.device), accumulate=True)


def _allowed_rows(allowed: RowTensors | None, batch: int, vocab: int, device: torch.device):
    """(rows, masks (R, V) bool) of the constrained rows, or None when no row is constrained."""
    if allowed is None:
        return None
    if isinstance(allowed, Tensor):
        if allowed.shape != (batch, vocab) or allowed.dtype != torch.bool:
            raise ValueError(
                f"allowed must be a ({batch}, {vocab}) bool tensor, got {allowed.dtype} {tuple(allowed.shape)}"
            )
        return list(range(batch)), allowed
    if len(allowed) != batch:
        raise ValueError(f"need one allowed mask (or None) per row: {batch} rows, {len(allowed)} masks")
    rows = [i for i, mask in enumerate(allowed) if mask is not None]
    if not rows:
        return None
    return rows, torch.stack([allowed[i] for i in rows]).to(device=device, dtype=torch.bool)  # type: ignore[misc]


def fill_neg_inf(x: Tensor, drop: Tensor) -> Tensor:
    """x with -inf where `drop` (bool, same shape) is True: `x.masked_fill(drop, -inf)`, exactly, as a minimum with
    a +-inf bias. For scattered masks such as a grammar's: on CPU torch's masked_fill and where branch per element
    and take 0.37 ms on a 16 x 4096 float32 batch with a random mask, against 0.09 ms for these four elementwise
    passes (on the long runs of top-k/top-p masks masked_fill is as fast, and stays there). x must hold no NaN."""
    bias = drop.to(x.dtype).mul_(-2.0).add_(1.0).mul_(math.inf)  # -inf where dropped, +inf elsewhere
    return torch.minimum(x, bias)


def mask_disallowed(logits: Tensor, allowed: RowTensors | None) -> tuple[Tensor, Tensor]:
    """logits (B, V) with disallowed tokens at -inf, and (B,) bool: some token is allowed.

    A row whose mask allows nothing is left as it was (its token is meaningless; the caller reports it)."""
    batch, vocab = logits.shape
    any_allowed = torch.ones(batch, dtype=torch.bool, device=logits.device)
    constrained = _allowed_rows(allowed, batch, vocab, logits.device)
    if constrained is None:
        return logits, any_allowed
    rows, masks = constrained  # masks (R, V)
    index = torch.tensor(rows, device=logits.device)
    some = masks.any(dim=-1)  # (R,)
    any_allowed[index] = some
    blocked = ~masks & some[:, None]  # (R, V)
    if len(rows) == batch:
        return fill_neg_inf(logits, blocked), any_allowed
    return logits.index_copy(0, index, fill_neg_inf(logits[index], blocked)), any_allowed


def _cap(x: Tensor) -> Tensor:
    """+inf (a positive logit divided by a penalty or temperature that underflowed, e.g. 1e-46 in float32) to the
    largest finite value: the limit it stands for, and no inf - inf = NaN in the softmax."""
    return x.clamp(max=torch.finfo(x.dtype).max)


def _allowed_or_best(tokens: Tensor, masked: Tensor, allowed: RowTensors | None) -> Tensor:
    """tokens (B,) with any token the mask forbids (masked logit -inf; possible only when every kept probability
    underflowed) replaced by the row's most likely allowed token: a constrained row never gets a forbidden one."""
    if allowed is None:
        return tokens
    forbidden = masked.gather(1, tokens[:, None])[:, 0] == float("-inf")  # (B,)
    return torch.where(forbidden, masked.argmax(dim=-1), tokens)


class _KeyBuffer(threading.local):
    """One int64 element per device that the seeded rows' keys are drawn into (an allocation per row cost more than
    the draw); per thread, so that two threads sampling at once never read each other's key."""

    def __init__(self) -> None:
        self.by_device: dict[torch.device, Tensor] = {}

    def on(self, device: torch.device) -> Tensor:
        buffer = self.by_device.get(device)
        if buffer is None:
            buffer = self.by_device[device] = torch.empty(1, dtype=torch.int64, device=device)
        return buffer


_KEY_BUFFER = _KeyBuffer()
_CPU = torch.device("cpu")


def race_keys(generators: Sequence[torch.Generator | None]) -> list[int]:
    """One 64-bit key per row for the race's exponentials: a seeded row's from its generator (the same alone or
    in any batch), the unseeded rows' in one draw from the global RNG."""
    values = race_key_draws(len(generators)) if any(g is None for g in generators) else [0] * len(generators)
    buffer = _KEY_BUFFER.on(_CPU)
    for row, generator in enumerate(generators):
        if generator is not None:  # drawn on the generator's device (a CUDA row's generator is a CUDA one)
            on_device = buffer if generator.device == _CPU else _KEY_BUFFER.on(generator.device)
            values[row] = int(on_device.random_(generator=generator)) % 2**64
    return values


def race_key_draws(count: int, generator: torch.Generator | None = None) -> list[int]:
    """`count` 64-bit race keys drawn in order from a CPU `generator` (None: the global RNG): what `count` draws of
    one key each give (tnn.server.decode_runs draws several steps' keys at once)."""
    values = torch.empty(count, dtype=torch.int64).random_(generator=generator).tolist()
    return [value % 2**64 for value in values]


def race_exponentials(keys: Sequence[int], vocab: int) -> Tensor:
    """(R, V) float64 Exp(1) draws, E_v = -log(u_v) with u_v in (0, 1) the v-th output of SplitMix64 seeded with
    the row's key: a function of the key and the token alone (model/sampler.c computes the same)."""
    index = np.arange(1, vocab + 1, dtype=np.uint64)[None, :]  # (1, V)
    z = np.asarray(keys, dtype=np.uint64)[:, None] + index * np.uint64(0x9E3779B97F4A7C15)  # (R, V), mod 2^64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    uniform = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return torch.from_numpy(-np.log(uniform))


def _keep_floor(probs: Tensor, params: Sequence[SamplingParams]) -> Tensor:
    """(R, 1): the probability at and above which top-k, top-p (on the renormalised top-k distribution) and min-p
    keep a token of probs (R, V) (0 for a row that truncates nothing). Looks at the largest top_k (or
    TOP_P_WINDOW) most likely tokens first and ranks the whole row only if some row's nucleus reaches past them."""
    vocab = probs.shape[-1]
    floor = torch.zeros(len(params), 1, dtype=probs.dtype, device=probs.device)
    if any(p.truncated for p in params):
        top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        window = max([k for k in top_k if k < vocab], default=0)
        if any(k == vocab and p.top_p < 1 for k, p in zip(top_k, params, strict=True)):
            window = max(window, TOP_P_WINDOW)
        in_window = _floor_in_window(probs, params, top_k, min(window, vocab))
        floor = in_window if in_window is not None else _floor_in_window(probs, params, top_k, vocab)
        assert floor is not None  # the whole row always suffices
    if any(p.min_p > 0 for p in params):
        floor = torch.maximum(floor, probs.amax(dim=-1, keepdim=True) * _column([p.min_p for p in params], probs))
    return floor


def _floor_in_window(probs: Tensor, params: Sequence[SamplingParams], top_k: list[int], window: int) -> Tensor | None:
    """`_keep_floor` before min-p from the `window` most likely tokens of probs (R, V); None if some row's
    nucleus may extend past the window. A token is kept when fewer than k tokens rank before it and the
    (top-k renormalised) mass ranked before it is below top_p; the most likely token always is."""
    vocab = probs.shape[-1]
    ranked = probs.topk(window, dim=-1).values if window < vocab else probs.sort(dim=-1, descending=True).values
    ranks = torch.arange(window, device=probs.device)[None, :]  # (1, W)
    k_column = torch.tensor(top_k, device=probs.device)[:, None]  # (R, 1)
    keep = ranks < k_column  # (R, W)
    mass = ranked.masked_fill(~keep, 0.0)  # (R, W): the top-k distribution, not yet renormalised
    limited = k_column < vocab  # (R, 1): rows with a top-k renormalise over it; the others over the whole row
    norm = torch.where(limited, mass.sum(dim=-1, keepdim=True), probs.sum(dim=-1, keepdim=True))
    top_p = _column([p.top_p for p in params], probs)  # (R, 1)
    keep &= (mass.cumsum(dim=-1) - mass) < top_p * norm
    keep[:, 0] = True  # the top token survives, also a top_p that is 0 in float32 (5e-324)
    if window < vocab and bool((keep[:, -1:] & ~limited & (top_p < 1)).any()):
        return None
    floor = ranked.masked_fill(~keep, math.inf).amin(dim=-1, keepdim=True)  # (R, 1)
    return torch.where(limited | (top_p < 1), floor, 0.0)


def _draw(logits: Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]) -> Tensor:
    """One token per row of logits (R, V), every row sampled (none greedy). -> (R,) int64.

    The softmax of the tempered logits, the probability floor per row that top-k/top-p/min-p keep, then an
    exponential race among the kept tokens, argmax p_v / E_v: a draw from the filtered distribution. The race
    is what keeps a seeded row's tokens the same in any batch: logits that differ in their last bits between
    batch sizes change its winner only when two ratios tie to those bits (an inverted CDF would move a token
    boundary with them). The native kernel (tnn.model.sampling_native) where it is built, else the torch twin."""
    temperatures = {p.temperature for p in params}
    divisor = temperatures.pop() if len(temperatures) == 1 else _column([p.temperature for p in params], logits)
    probs = torch.softmax(_cap(logits / divisor), dim=-1)  # (R, V)
    keys = race_keys(generators)
    if native_draw_available(probs):
        vocab = probs.shape[-1]
        top_k = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
        return native_draw(probs, top_k, [p.top_p for p in params], [p.min_p for p in params], keys)
    return _draw_torch(probs, params, keys)


def _draw_torch(probs: Tensor, params: Sequence[SamplingParams], keys: Sequence[int]) -> Tensor:
    """`_draw` after the softmax in torch ops: probs (R, V), one race key per row -> (R,) int64."""
    if any(p.truncated or p.min_p > 0 for p in params):
        probs = probs.masked_fill(probs < _keep_floor(probs, params), 0.0)
    exponentials = race_exponentials(keys, probs.shape[-1]).to(probs.device)  # (R, V) float64
    return (probs.double() / exponentials).argmax(dim=-1)


def _check_batch(logits: Tensor, params: Sequence[SamplingParams], generators: Sequence[object]) -> None:
    batch = logits.shape[0]
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    if len(params) != batch or len(generators) != batch:
        raise ValueError(
            f"need one SamplingParams and generator per row: {batch} rows, "
            f"{len(params)} params, {len(generators)} generators"
        )


def _prepare(logits: Tensor, params: Sequence[SamplingParams]) -> tuple[Tensor, Tensor]:
    """float32 logits with non-finite rows zeroed and biases added, and the (B,) finite flags. Never edits
    the caller's tensor (the engine reads the model's logits again for logprobs)."""
    logits = logits.float()
    if math.isfinite(float(logits.sum())):  # one vectorised sum for the batch: every row is finite
        return add_logit_bias(logits, params), torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    finite = torch.isfinite(logits).all(dim=-1)  # NaN/inf somewhere, or a sum that overflowed: element by element
    logits = torch.where(finite[:, None], logits, 0.0)
    return add_logit_bias(logits, params), finite


def sample(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    *,
    output_counts: RowTensors | None = None,
    prompt_mask: RowTensors | None = None,
    allowed: RowTensors | None = None,
) -> SampleResult:
    """Draw one token per row. logits: (B, V) any float dtype; params and generators: one per row.

    output_counts: generated-token counts (B, V) or per row (None: no counts); prompt_mask: prompt tokens (B, V)
    bool or per row; allowed: allowed tokens (B, V) bool or per row (None: unconstrained)."""
    _check_batch(logits, params, generators)
    plain = _plain_rows(logits, params, allowed)
    if len(plain) == len(params):
        return _sample_native(logits, params, generators)
    with serial_below(logits.numel(), SERIAL_SAMPLING_ELEMENTS):
        if not plain:
            return _sample(logits, params, generators, output_counts, prompt_mask, allowed)
        return _sample_split(logits, params, generators, plain, output_counts, prompt_mask, allowed)


def _plain_rows(logits: Tensor, params: Sequence[SamplingParams], allowed: RowTensors | None) -> list[int]:
    """The rows that `_sample_native` takes (float32 CPU logits and the kernel built): those without a logit
    bias, a penalty or an allowed mask. The others take `_sample`, in torch ops."""
    if not native_sample_available(logits):
        return []
    if isinstance(allowed, Tensor) or (allowed is not None and len(allowed) != len(params)):
        return []  # a dense mask constrains every row; a list of the wrong length `_sample` refuses
    masks = allowed if allowed is not None else [None] * len(params)
    return [
        row
        for row, (p, mask) in enumerate(zip(params, masks, strict=True))
        if mask is None and not p.logit_bias and not p.penalised
    ]


def _subset(values: RowTensors | None, rows: list[int]) -> RowTensors | None:
    """Rows `rows` of a (B, V) tensor or a per-row list (None stays None)."""
    if values is None:
        return None
    if isinstance(values, Tensor):
        return values[torch.tensor(rows, device=values.device)]
    return [values[i] for i in rows]


def _sample_split(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    plain: list[int],
    output_counts: RowTensors | None,
    prompt_mask: RowTensors | None,
    allowed: RowTensors | None,
) -> SampleResult:
    """A batch of some plain rows and some others: the plain ones in one native call, the others through
    `_sample`, each row drawn as in a batch of its own kind."""
    taken = set(plain)
    rest = [row for row in range(len(params)) if row not in taken]
    native = _sample_native(logits[plain], [params[i] for i in plain], [generators[i] for i in plain])
    other = _sample(
        logits[rest],
        [params[i] for i in rest],
        [generators[i] for i in rest],
        _subset(output_counts, rest),
        _subset(prompt_mask, rest),
        _subset(allowed, rest),
    )

    def merged(from_plain: Tensor, from_rest: Tensor) -> Tensor:  # (B,) in row order
        out = torch.empty(len(params), dtype=from_plain.dtype)
        out[plain] = from_plain
        out[rest] = from_rest
        return out

    return SampleResult(
        tokens=merged(native.tokens, other.tokens),
        finite=merged(native.finite, other.finite),
        any_allowed=merged(native.any_allowed, other.any_allowed),
    )


def native_sample_available(logits: Tensor) -> bool:
    """Whether `_sample_native` takes logits (the test of `native_draw_available`; patched off to test the twin)."""
    return native_draw_available(logits)


def _sample_native(
    logits: Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> SampleResult:
    """`_sample` in one native call, for rows without bias, penalties or masks: per row the finite check, then the
    greedy argmax or the tempered softmax, the floor and the race, with each row's key as `_draw` draws it (only
    the sampled rows draw one)."""
    vocab = logits.shape[1]
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    keys = [0] * len(params)
    for row, key in zip(sampled, race_keys([generators[i] for i in sampled]), strict=True):
        keys[row] = key
    tokens, finite = native_sample(
        logits,
        [0.0 if p.greedy else p.temperature for p in params],
        [p.top_k if 0 < p.top_k < vocab else 0 for p in params],
        [p.top_p for p in params],
        [p.min_p for p in params],
        keys,
    )
    return SampleResult.from_host(tokens, finite)


@contextlib.contextmanager
def serial_below(elements: int, threshold: int) -> Iterator[None]:
    """One intra-op thread while `elements` < threshold (CPU only matters): a small op in a parallel region waits
    at OpenMP's barrier for a worker thread; on a busy 2-core machine the sampler of one sequence took 7-10 ms
    with 2 threads and 0.9-1.0 ms with 1 (benchmarks/native_step.py's notes)."""
    threads = torch.get_num_threads()
    if elements >= threshold or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sample(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    output_counts: RowTensors | None,
    prompt_mask: RowTensors | None,
    allowed: RowTensors | None,
) -> SampleResult:
    logits, finite = _prepare(logits, params)
    batch, vocab = logits.shape
    penalised = [i for i, p in enumerate(params) if p.penalised]
    if penalised and (output_counts is not None or prompt_mask is not None):
        index = torch.tensor(penalised, device=logits.device)
        penalties = apply_penalties(
            logits[index],
            [params[i] for i in penalised],
            _rows_of(output_counts, penalised, vocab, torch.int32, logits.device),
            _rows_of(prompt_mask, penalised, vocab, torch.bool, logits.device),
        )  # (P, V)
        logits = logits.index_copy(0, index, penalties)
    logits, any_allowed = mask_disallowed(logits, allowed)
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if len(sampled) == batch:
        tokens = _allowed_or_best(_draw(logits, params, generators), logits, allowed)
        return SampleResult(tokens=tokens, finite=finite, any_allowed=any_allowed)
    tokens = logits.argmax(dim=-1)  # (B,): the greedy rows' tokens
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        drawn = _draw(logits[index], [params[i] for i in sampled], [generators[i] for i in sampled])
        tokens.index_copy_(0, index, drawn)
        tokens = _allowed_or_best(tokens, logits, allowed)
    return SampleResult(tokens=tokens, finite=finite, any_allowed=any_allowed)


def sample_reference(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    *,
    output_counts: RowTensors | None = None,
    prompt_mask: RowTensors | None = None,
    allowed: RowTensors | None = None,
) -> SampleResult:
    """Slow twin of `sample`: every row through penalties, a full sort for top-k, top-p and min-p, and the
    race over every token of each sampled row alone."""
    _check_batch(logits, params, generators)
    logits, finite = _prepare(logits, params)
    batch, vocab = logits.shape
    every = list(range(batch))
    logits = apply_penalties(
        logits,
        params,
        _rows_of(output_counts, every, vocab, torch.int32, logits.device),
        _rows_of(prompt_mask, every, vocab, torch.bool, logits.device),
    )
    logits, any_allowed = mask_disallowed(logits, allowed)
    greedy = torch.tensor([p.greedy for p in params], device=logits.device)
    if bool(greedy.all()):
        return SampleResult(tokens=logits.argmax(dim=-1), finite=finite, any_allowed=any_allowed)

    temperature = _column([1.0 if p.greedy else p.temperature for p in params], logits)
    probs = torch.softmax(_cap(logits / temperature), dim=-1)  # (B, V), vocabulary order
    ranked, order = probs.sort(dim=-1, descending=True)  # (B, V) each
    ranks = torch.arange(vocab, device=logits.device)[None, :]  # (1, V)
    top_k = torch.tensor([p.top_k or vocab for p in params], device=logits.device)[:, None]
    keep = ranks < top_k  # (B, V)
    top_k_probs = ranked * keep / (ranked * keep).sum(dim=-1, keepdim=True)  # top-p acts on this, renormalised
    keep &= (top_k_probs.cumsum(dim=-1) - top_k_probs) < _column([p.top_p for p in params], logits)
    keep[:, 0] = True  # the most likely token always survives
    keep &= ranked >= ranked[:, :1] * _column([p.min_p for p in params], logits)
    kept = torch.zeros_like(keep).scatter_(1, order, keep)  # (B, V), vocabulary order

    sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
    index = torch.tensor(sampled_rows, device=logits.device)
    keys = [key for i in sampled_rows for key in race_keys([generators[i]])]  # each row alone
    ratios = probs[index].masked_fill(~kept[index], 0.0).double() / race_exponentials(keys, vocab)  # (S, V)
    drawn = ratios.argmax(dim=-1)  # (S,): the race among the kept tokens
    tokens = logits.argmax(dim=-1).index_copy_(0, index, drawn)
    return SampleResult(tokens=_allowed_or_best(tokens, logits, allowed), finite=finite, any_allowed=any_allowed)
