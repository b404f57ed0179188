"""tnn.model.sampling: the batched fast path against its slow twin, batch invariance of seeded rows, the
distributions it draws from, and every filter (logit bias, penalties, allowed masks, top-k, top-p, min-p)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from tnn.model.native_lib import SAMPLER, NativeSource, build_library, open_library
from tnn.model.sampling import (
    SamplingParams,
    _draw_torch,
    _plain_rows,
    _sample,
    _sample_native,
    fill_neg_inf,
    sample,
    sample_reference,
)
from tnn.model.sampling_native import native_draw, native_draw_available, native_sample

VOCAB = 512

# One row of each kind the fast path treats differently, and combinations of them.
MIXED = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.3, top_k=20),
    SamplingParams(temperature=1.0, top_p=0.8),
    SamplingParams(temperature=0.9, top_k=50, top_p=0.9),
    SamplingParams(temperature=1.0, min_p=0.05),
    SamplingParams(temperature=1.5, top_p=0.95, min_p=0.1),
    SamplingParams(temperature=1.0, repetition_penalty=1.3),
    SamplingParams(temperature=0.8, presence_penalty=0.5, frequency_penalty=0.3),
    SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=1.0),
    SamplingParams(temperature=1.0, logit_bias={3: 5.0, 7: -100.0, 11: 2.5}),
    SamplingParams(temperature=0.0, logit_bias={42: 100.0}),
    SamplingParams(temperature=1.2, top_k=5, logit_bias={1: 1.0}, presence_penalty=-1.0),
    SamplingParams(temperature=1.0, top_k=400, top_p=0.97),
]


def seeded(params: list[SamplingParams], first_seed: int) -> list[SamplingParams]:
    return [SamplingParams(**{**p.__dict__, "seed": first_seed + i}) for i, p in enumerate(params)]


def batch_of(rows: int, first_seed: int) -> list[SamplingParams]:
    return seeded([MIXED[i % len(MIXED)] for i in range(rows)], first_seed)


def penalty_inputs(rows: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.randint(0, 3, (rows, VOCAB), generator=gen, dtype=torch.int32)
    counts *= torch.rand(rows, VOCAB, generator=gen) < 0.05  # a few generated tokens per row
    prompt = torch.rand(rows, VOCAB, generator=gen) < 0.05
    return counts, prompt


def allowed_masks(rows: int, gen: torch.Generator) -> list[torch.Tensor | None]:
    """Every third row constrained to a random ~10% of the vocabulary."""
    return [torch.rand(VOCAB, generator=gen) < 0.1 if i % 3 == 1 else None for i in range(rows)]


@pytest.fixture(params=["native", "torch"])
def draw_kernel(request, monkeypatch) -> str:
    """Runs a test with the native kernels (skipped where they cannot be built) and with their torch twins."""
    if request.param == "torch":
        monkeypatch.setattr("tnn.model.sampling.native_draw_available", lambda probs: False)
        monkeypatch.setattr("tnn.model.sampling.native_sample_available", lambda logits: False)
    elif not native_draw_available(torch.zeros(1, 1)):
        pytest.skip("no C compiler: the native draw kernel is not built here")
    return request.param


@pytest.mark.parametrize("rows", [1, 5, 32])
def test_fast_path_draws_the_same_tokens_as_the_slow_twin(rows: int, draw_kernel: str) -> None:
    gen = torch.Generator().manual_seed(rows)
    params = batch_of(rows, first_seed=1000)
    fast_gens = [p.generator() for p in params]
    slow_gens = [p.generator() for p in params]
    compared = 0
    for step in range(8):  # several steps: the generators advance the same way on both sides
        scale = 0.1 if step % 4 == 2 else 3.0  # flat rows: top-p nuclei wider than the fast path's first window
        logits = scale * torch.randn(rows, VOCAB, generator=gen)
        counts, prompt = penalty_inputs(rows, gen)
        allowed = allowed_masks(rows, gen) if step % 2 else None
        kwargs = {"output_counts": counts, "prompt_mask": prompt, "allowed": allowed}
        fast = sample(logits, params, fast_gens, **kwargs)
        slow = sample_reference(logits, params, slow_gens, **kwargs)
        assert torch.equal(fast.tokens, slow.tokens), (step, fast.tokens, slow.tokens)
        assert fast.finite.all() and fast.any_allowed.all()
        compared += rows
    assert compared == 8 * rows


def test_per_row_lists_equal_dense_tensors() -> None:
    gen = torch.Generator().manual_seed(1)
    params = batch_of(14, first_seed=7)
    logits = torch.randn(14, VOCAB, generator=gen)
    counts, prompt = penalty_inputs(14, gen)
    allowed = allowed_masks(14, gen)
    dense_allowed = torch.stack([torch.ones(VOCAB, dtype=torch.bool) if m is None else m for m in allowed])
    dense = sample(logits, params, [p.generator() for p in params], output_counts=counts, prompt_mask=prompt,
                   allowed=dense_allowed)  # fmt: skip
    lists = sample(
        logits,
        params,
        [p.generator() for p in params],
        output_counts=[c if p.penalised else None for c, p in zip(counts, params, strict=True)],
        prompt_mask=[m if p.penalised else None for m, p in zip(prompt, params, strict=True)],
        allowed=allowed,
    )
    assert torch.equal(dense.tokens, lists.tokens)


def test_a_seeded_row_draws_the_same_tokens_alone_or_in_a_batch_of_32() -> None:
    gen = torch.Generator().manual_seed(3)
    params = batch_of(32, first_seed=50)
    batch_gens = [p.generator() for p in params]
    alone_gens = [p.generator() for p in params]
    for _ in range(6):
        logits = torch.randn(32, VOCAB, generator=gen) * 2
        together = sample(logits, params, batch_gens).tokens
        alone = torch.cat(
            [
                sample(logits[i : i + 1], [p], [g]).tokens
                for i, (p, g) in enumerate(zip(params, alone_gens, strict=True))
            ]
        )
        assert torch.equal(together, alone)


def empirical(logits: torch.Tensor, params: SamplingParams, draws: int) -> torch.Tensor:
    """Frequencies of `draws` unseeded draws from one row of logits (V,), in one batched call."""
    torch.manual_seed(0)
    rows = logits.expand(draws, -1)
    tokens = sample(rows, [params] * draws, [None] * draws).tokens
    return torch.bincount(tokens, minlength=logits.shape[0]).double()


def filtered_distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The target distribution, written out by hand in float64: temperature, top-k, top-p, min-p."""
    probs = torch.softmax(logits.double() / params.temperature, dim=-1)
    order = probs.argsort(descending=True).tolist()
    if params.top_k:  # top-p acts on the top-k distribution, renormalised
        probs[order[params.top_k :]] = 0.0
        probs /= probs.sum()
    keep = torch.zeros_like(probs, dtype=torch.bool)
    total = 0.0
    for token in order:
        if probs[token] == 0 or total >= params.top_p:
            break
        keep[token] = True
        total += float(probs[token])
    kept = torch.where(keep, probs, 0.0)
    kept /= kept.sum()
    kept = torch.where(kept >= params.min_p * kept.max(), kept, 0.0)
    return kept / kept.sum()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.5),
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=1.0, top_p=0.7),
        SamplingParams(temperature=1.0, min_p=0.2),
        SamplingParams(temperature=1.4, top_k=6, top_p=0.9, min_p=0.05),
    ],
    ids=["plain", "cold", "top_k", "top_p", "min_p", "all"],
)
def test_draws_follow_the_filtered_distribution(params: SamplingParams, draw_kernel: str) -> None:
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    target = filtered_distribution(logits, params)
    counts = empirical(logits, params, draws=40_000)
    assert counts[target == 0].sum() == 0  # filtered tokens are never drawn
    support = target > 0
    result = chisquare(counts[support], counts.sum() * target[support])
    assert result.pvalue > 1e-4, (counts, target)


def test_min_p_keeps_tokens_at_least_min_p_times_the_top_probability() -> None:
    logits = torch.tensor([math.log(1.0), math.log(0.5), math.log(0.2), math.log(0.09), math.log(0.01)])
    counts = empirical(logits, SamplingParams(min_p=0.1), draws=5000)
    assert counts[:3].min() > 0 and counts[3:].sum() == 0  # 0.09 < 0.1 * 1.0 (relative to the top token)


def test_logit_bias_comes_first_and_steers_greedy_and_sampled_rows() -> None:
    logits = torch.zeros(3, VOCAB)
    logits[:, 10] = 5.0
    params = [
        SamplingParams(temperature=0.0, logit_bias={20: 6.0}),
        SamplingParams(temperature=1.0, logit_bias={30: 100.0}, seed=1),
        SamplingParams(temperature=0.0, logit_bias={10: -100.0, 40: 0.5}),
    ]
    tokens = sample(logits, params, [p.generator() for p in params]).tokens.tolist()
    assert tokens == [20, 30, 40]
    # before the repetition penalty: a biased-up token seen in the prompt is divided, not multiplied
    penalised = [SamplingParams(temperature=0.0, logit_bias={20: 6.0}, repetition_penalty=2.0)]
    prompt = torch.zeros(1, VOCAB, dtype=torch.bool)
    prompt[0, 20] = True
    assert sample(logits[:1], penalised, [None], prompt_mask=prompt).tokens.item() == 10  # 6/2 = 3 < 5


def test_penalties_touch_only_the_rows_that_ask() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 5] = 1.0
    counts = torch.zeros(2, VOCAB, dtype=torch.int32)
    counts[:, 5] = 3
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, frequency_penalty=1.0)]
    tokens = sample(logits, params, [None, None], output_counts=counts).tokens.tolist()
    assert tokens[0] == 5 and tokens[1] != 5


def test_allowed_mask_limits_every_kind_of_row_and_reports_empty_masks() -> None:
    gen = torch.Generator().manual_seed(5)
    params = batch_of(len(MIXED), first_seed=0)
    allowed = torch.zeros(len(MIXED), VOCAB, dtype=torch.bool)
    allowed[:, 100:104] = True
    allowed[2] = False  # a grammar dead end
    for _ in range(20):
        result = sample(torch.randn(len(MIXED), VOCAB, generator=gen) * 4, params, [p.generator() for p in params],
                        allowed=allowed)  # fmt: skip
        assert result.any_allowed.tolist() == [i != 2 for i in range(len(MIXED))]
        others = [t for i, t in enumerate(result.tokens.tolist()) if i != 2]
        assert all(100 <= t < 104 for t in others)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fill_neg_inf_equals_masked_fill_bit_for_bit(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(9, 257, generator=generator).to(dtype) * 40
    x[0, :5] = float("-inf")  # already masked entries stay -inf, kept or dropped
    x[1, 7] = torch.finfo(dtype).max
    drop = torch.rand(9, 257, generator=generator) < 0.7
    drop[2] = True  # a row with nothing left
    got = fill_neg_inf(x, drop)
    assert got.dtype == dtype
    assert torch.equal(got, x.masked_fill(drop, float("-inf")))


def test_non_finite_rows_are_reported_and_others_sampled(draw_kernel: str) -> None:
    logits = torch.randn(4, VOCAB)
    logits[1, 7] = float("nan")
    logits[2, 0] = float("inf")
    logits[3, 9] = float("-inf")
    params = [SamplingParams(temperature=1.0, seed=0)] * 3 + [SamplingParams(temperature=0.0)]
    result = sample(logits, params, [p.generator() for p in params])
    assert result.finite.tolist() == [True, False, False, False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": float("nan")}, "min_p"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias keys"),
        ({"logit_bias": {"3": 1.0}}, "logit_bias keys"),
        ({"logit_bias": {3: 101.0}}, "logit_bias values"),
        ({"logit_bias": {3: float("nan")}}, "logit_bias values"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_bias_outside_the_vocabulary_and_bad_masks_are_refused() -> None:
    logits = torch.zeros(1, VOCAB)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample(logits, [SamplingParams(logit_bias={VOCAB: 1.0})], [None])
    with pytest.raises(ValueError, match="allowed must be"):
        sample(logits, [SamplingParams()], [None], allowed=torch.ones(1, VOCAB))
    with pytest.raises(ValueError, match="one allowed mask"):
        sample(logits, [SamplingParams()], [None], allowed=[None, None])


@pytest.mark.parametrize("sampler", [sample, sample_reference])
@pytest.mark.parametrize("top_p", [5e-324, 1e-46, 1e-30])
def test_a_top_p_that_underflows_keeps_the_top_allowed_token(sampler, top_p: float) -> None:
    """top_p 5e-324 is 0 in float32: the top token still survives (the smallest nucleus), the grammar's too."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 64, generator=gen) * 4
    allowed = torch.zeros(8, 64, dtype=torch.bool)
    allowed[:, 5] = allowed[:, 9] = True  # guided_choice ["0", "0"]: one or two tokens allowed
    params = [SamplingParams(temperature=1.0, top_p=top_p, seed=i) for i in range(8)]
    result = sampler(logits, params, [p.generator() for p in params], allowed=allowed)
    masked = logits.masked_fill(~allowed, float("-inf"))
    assert torch.equal(result.tokens, masked.argmax(dim=-1))


@pytest.mark.parametrize("sampler", [sample, sample_reference])
def test_no_forbidden_token_even_when_every_kept_probability_underflows(sampler) -> None:
    """A cold row whose race draws nothing positive (every kept p/E is 0) still returns an allowed token."""
    logits = torch.full((1, 32), -1e30)
    logits[0, 7] = 0.0
    allowed = torch.zeros(1, 32, dtype=torch.bool)
    allowed[0, 20] = True  # the only allowed token has a logit ~ -inf: probability 0 after the softmax
    params = [SamplingParams(temperature=0.01, seed=1)]
    result = sampler(logits, params, [params[0].generator()], allowed=allowed)
    assert result.tokens.tolist() == [20] and bool(result.any_allowed[0])


@pytest.mark.parametrize("sampler", [sample, sample_reference])
@pytest.mark.parametrize("penalty", [1e-46, 5e-324, 1e-38])
def test_a_repetition_penalty_that_underflows_acts_as_its_limit(sampler, penalty: float) -> None:
    """repetition_penalty -> 0 sends a seen token's positive logit to +inf: capped at the largest float, so the
    seen positive tokens win (no inf - inf = NaN, no token 0 / EOS by accident)."""
    logits = torch.tensor([[2.0, 1.0, -1.0, 3.0, 0.5, 0.0]])
    seen = torch.tensor([[False, True, True, False, True, False]])
    drawn = set()
    for seed in range(40):
        params = [SamplingParams(temperature=0.7, repetition_penalty=penalty, seed=seed)]
        drawn.add(sampler(logits, params, [params[0].generator()], prompt_mask=seen).tokens.item())
    assert drawn <= {1, 4} and drawn  # the seen tokens with a positive logit, nothing else


@pytest.mark.parametrize("sampler", [sample, sample_reference])
def test_logits_that_differ_in_their_last_bits_draw_the_same_tokens(sampler, draw_kernel: str) -> None:
    """A seeded row's tokens stay the same in any batch although the model's logits differ in their last bits
    between batch sizes (other GEMM kernels): the race changes its winner only on a near tie of two ratios."""
    gen = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(400, 4096, generator=gen)
    nudged = logits * (1 + 2e-7 * torch.randn(400, 4096, generator=gen))  # float32 round-off of a GEMM
    params = [SamplingParams(temperature=0.8, top_p=[1.0, 0.95, 0.5][i % 3], seed=i) for i in range(400)]
    first = sampler(logits, params, [p.generator() for p in params]).tokens
    second = sampler(nudged, params, [p.generator() for p in params]).tokens
    assert (first != second).sum() <= 1  # at most a near tie in 400 draws (none with these seeds)


def test_the_native_kernel_draws_the_torch_twins_tokens_on_wide_and_narrow_nuclei() -> None:
    """4,096-token rows from nearly flat to peaked (nuclei of 1 to thousands of tokens, past the twin's top-k
    window), every truncation and a few exact ties: the kernel's radix-select floors and its race (logarithms only
    where a token could still win) give the twin's tokens."""
    if not native_draw_available(torch.zeros(1, 1)):
        pytest.skip("no C compiler: the native draw kernel is not built here")
    gen = torch.Generator().manual_seed(11)
    kinds = [
        SamplingParams(temperature=1.0),
        SamplingParams(top_p=0.95),
        SamplingParams(top_p=0.5),
        SamplingParams(top_p=0.999),
        SamplingParams(top_k=1),
        SamplingParams(top_k=40),
        SamplingParams(top_k=1000, top_p=0.9),
        SamplingParams(min_p=0.05),
        SamplingParams(top_k=50, top_p=0.8, min_p=0.1),
    ]
    compared = 0
    for scale in (0.05, 0.5, 2.0, 6.0):
        logits = scale * torch.randn(len(kinds) * 8, 4096, generator=gen)
        logits[::5, 100:110] = logits[::5, 100:101]  # ties of ten tokens in some rows
        probs = torch.softmax(logits, dim=-1)
        params = [kinds[i % len(kinds)] for i in range(len(logits))]
        keys = [int(k) % 2**64 for k in torch.randint(-(2**63), 2**63 - 1, (len(logits),), generator=gen)]
        top_k = [p.top_k for p in params]
        native = native_draw(probs, top_k, [p.top_p for p in params], [p.min_p for p in params], keys)
        assert torch.equal(native, _draw_torch(probs, params, keys)), scale
        compared += len(logits)
    assert compared == 4 * 8 * len(kinds)


# The kinds of row the one-call native path (`_sample_native`) takes: no bias, penalty or mask.
PLAIN = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.8, top_p=0.95),
    SamplingParams(top_p=0.5),
    SamplingParams(top_p=0.999, temperature=2.0),
    SamplingParams(temperature=1.3, top_k=40),
    SamplingParams(top_k=1000, top_p=0.9),
    SamplingParams(min_p=0.05),
    SamplingParams(temperature=0.9, top_k=50, top_p=0.8, min_p=0.1),
    SamplingParams(temperature=2e-5, top_p=0.9),  # just above greedy: huge logits overflow to the cap
]


def needs_native_sample() -> None:
    if not native_draw_available(torch.zeros(1, 1)):
        pytest.skip("no C compiler: the native sampler is not built here")


def test_the_one_call_native_path_draws_the_torch_paths_tokens(monkeypatch) -> None:
    """The native softmax (its own exp, within 2 ulp of expf; torch rounds its own way) and everything after it
    against the torch ops path (torch's softmax, the torch twin of the draw) and the slow twin, over several steps
    of the same seeded generators: 4,096-token rows from nearly flat to peaked, ties, logits that overflow when
    tempered. Tolerance: at most 1 token in 2,000 rows may differ (a race decided in the last bits of a ratio);
    none differs with these seeds."""
    needs_native_sample()
    gen = torch.Generator().manual_seed(21)
    params = seeded([PLAIN[i % len(PLAIN)] for i in range(100)], first_seed=300)
    assert _plain_rows(torch.zeros(1, 1), params, None) == list(range(100))
    native_gens, torch_gens, slow_gens = ([p.generator() for p in params] for _ in range(3))
    monkeypatch.setattr("tnn.model.sampling.native_draw_available", lambda probs: False)  # `_sample`: all torch
    rows = differ_torch = differ_slow = 0
    for step, scale in enumerate([0.05, 0.5, 2.0, 6.0, 20.0] * 4):
        logits = scale * torch.randn(len(params), 4096, generator=gen)
        logits[::7, 100:110] = logits[::7, 100:101]  # ties of ten tokens in some rows
        untied = torch.ones(len(params), dtype=torch.bool)
        if step % 5 == 4:
            logits[9::10] *= 1e34  # tempered by 2e-5: beyond the largest float, so many tokens tie at the cap
            untied[9::10] = False  # the slow twin keeps ties at a top-p boundary by position, the others keep all
        native = _sample_native(logits, params, native_gens)
        torch_path = _sample(logits, params, torch_gens, None, None, None)
        slow = sample_reference(logits, params, slow_gens)
        assert native.finite.all() and native.any_allowed.all()
        rows += len(params)
        differ_torch += int((native.tokens != torch_path.tokens).sum())
        differ_slow += int((native.tokens != slow.tokens)[untied].sum())
    assert rows == 2000
    assert differ_torch <= 1 and differ_slow <= 1, (differ_torch, differ_slow)


def test_the_portable_build_draws_the_vectorised_builds_tokens(tmp_path) -> None:
    """sampler.c built without its AVX2 paths (-DTNN_SAMPLER_PORTABLE: the default clone of the softmax, the plain
    selection and the one-token-at-a-time race, as on a CPU without AVX2 or off x86) draws exactly the tokens of
    the build that serves here: the same IEEE operations in the same order, and screens that only pass over
    tokens the exact test would pass over."""
    needs_native_sample()
    portable = NativeSource(SAMPLER.path, (*SAMPLER.flags, "-DTNN_SAMPLER_PORTABLE"), cxx=False)
    library = open_library(build_library(portable, tmp_path / "sampler-portable.so"))
    gen = torch.Generator().manual_seed(4)
    params = [PLAIN[i % len(PLAIN)] for i in range(60)]
    per_row = (
        [0.0 if p.greedy else p.temperature for p in params],
        [p.top_k for p in params],
        [p.top_p for p in params],
        [p.min_p for p in params],
        [int(k) % 2**64 for k in torch.randint(-(2**63), 2**63 - 1, (60,), generator=gen)],
    )
    for scale in (0.05, 0.5, 3.0, 20.0):
        logits = scale * torch.randn(60, 4093, generator=gen)  # a vocabulary that is no multiple of 8
        logits[3, 11] = float("nan")
        tokens, finite = native_sample(logits, *per_row)
        portable_tokens, portable_finite = native_sample(logits, *per_row, library=library)
        assert tokens == portable_tokens and finite == portable_finite, scale
        assert sum(finite) == 59


def test_a_mixed_batch_draws_its_plain_rows_natively_and_the_others_in_torch_ops() -> None:
    """Rows with a bias, a penalty or a grammar do not take the plain rows off the one-call native path: each kind
    is drawn as in a batch of its own (the same generators' steps on both sides)."""
    needs_native_sample()
    gen = torch.Generator().manual_seed(12)
    params = batch_of(30, first_seed=70)
    counts, prompt = penalty_inputs(30, gen)
    allowed = allowed_masks(30, gen)
    plain = _plain_rows(torch.zeros(1, 1), params, allowed)
    rest = [i for i in range(30) if i not in plain]
    assert 0 < len(plain) < 30 and all(
        params[i].penalised or params[i].logit_bias or allowed[i] is not None for i in rest
    )
    mixed_gens, apart_gens = [p.generator() for p in params], [p.generator() for p in params]
    for _ in range(4):
        logits = 3 * torch.randn(30, VOCAB, generator=gen)
        mixed = sample(logits, params, mixed_gens, output_counts=counts, prompt_mask=prompt, allowed=allowed).tokens
        native = _sample_native(logits[plain], [params[i] for i in plain], [apart_gens[i] for i in plain]).tokens
        other = _sample(
            logits[rest], [params[i] for i in rest], [apart_gens[i] for i in rest],
            counts[rest], prompt[rest], [allowed[i] for i in rest],
        ).tokens  # fmt: skip
        assert torch.equal(mixed[plain], native) and torch.equal(mixed[rest], other)


def test_greedy_rows_of_the_native_path_take_torchs_argmax_on_ties() -> None:
    needs_native_sample()
    logits = torch.randn(6, 512).round()  # many exact ties at the top
    logits[:, 300] = logits[:, 7] = logits.max() + 1  # the first of two maxima wins
    params = [SamplingParams(temperature=0.0)] * 6
    assert torch.equal(_sample_native(logits, params, [None] * 6).tokens, logits.argmax(dim=-1))
    assert logits.argmax(dim=-1).tolist() == [7] * 6


def test_a_plain_seeded_row_draws_the_same_tokens_alone_or_in_a_batch_of_32() -> None:
    """The one-call native path computes each row alone: the same tokens alone or in a batch, and rows with a NaN
    or an infinity fail alone without changing the others' tokens."""
    needs_native_sample()
    gen = torch.Generator().manual_seed(8)
    params = seeded([PLAIN[i % len(PLAIN)] for i in range(32)], first_seed=90)
    assert _plain_rows(torch.zeros(1, 1), params, [None] * 32) == list(range(32))
    batch_gens, alone_gens = [p.generator() for p in params], [p.generator() for p in params]
    for step in range(6):
        logits = 3 * torch.randn(32, 4096, generator=gen)
        if step % 2:
            logits[5, 17] = float("nan")
            logits[20, 0] = float("-inf")
        together = sample(logits, params, batch_gens)
        alone = [sample(logits[i : i + 1], [p], [g]) for i, (p, g) in enumerate(zip(params, alone_gens, strict=True))]
        assert torch.equal(together.tokens, torch.cat([a.tokens for a in alone]))
        finite = torch.ones(32, dtype=torch.bool)
        finite[[5, 20]] = not step % 2
        assert torch.equal(together.finite, finite)
        assert torch.equal(torch.cat([a.finite for a in alone]), finite)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_rows_on_cuda_draw_with_their_cuda_generators_alone_or_in_a_batch() -> None:
    """On a GPU the engine's generators are CUDA ones: each row's race key comes from its own generator there, and
    a seeded row draws the same tokens alone or in a batch."""
    logits = 3 * torch.randn(8, VOCAB, device="cuda")
    params = [SamplingParams(temperature=0.8, top_p=0.9, seed=i) for i in range(8)]
    together = sample(logits, params, [p.generator("cuda") for p in params]).tokens
    alone = [sample(logits[i : i + 1], [p], [p.generator("cuda")]).tokens for i, p in enumerate(params)]
    assert together.device.type == "cuda" and torch.equal(together, torch.cat(alone))
