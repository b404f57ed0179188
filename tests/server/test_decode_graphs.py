"""The decode step padded to buckets (and, on CUDA, replayed from captured graphs) equals the plain eager step.

The padding runs on the CPU here (the same code path the graphs replay): padded == plain. The graph tests need
CUDA and skip without it: replay == the eager padded step of the same bucket (the same kernels, so identical
tokens; bf16 matmuls may pick other kernels for another batch size, which is why the reference is padded too).
"""

from __future__ import annotations

import pytest
import torch

from tnn.model import TnnConfig, TnnLM, attach_ssm
from tnn.model.ssm import fused_step_compiled
from tnn.model.tnn import TnnState
from tnn.server.decode_graphs import DecodeStep, bucket_ladder

SLOTS = 40
STEPS = 4


def converted_model(device: str = "cpu", dtype: torch.dtype = torch.float32, fused: bool = False) -> TnnLM:
    torch.manual_seed(0)
    config = TnnConfig(vocab_size=97, d_model=32, n_layers=2, d_glu=32, d_rpe=16, train_length=64, dropout=0.0)
    model = attach_ssm(TnnLM(config).to(device=device, dtype=dtype).eval())
    if fused and not model.fuse_step(True):
        pytest.skip("torch.compile is unavailable here")
    if fused:  # fuse_step only switched it on: the first step compiles, or falls back to the eager step
        model.step(torch.zeros(1, dtype=torch.long, device=device), model.empty_state(1))
        if not fused_step_compiled(model.empty_state(1).layers[0].dtype, torch.device(device).type):
            pytest.skip("torch.compile could not build the fused step here (it fell back to the eager one, logged)")
    return model


def filled_pool(model: TnnLM, slots: int) -> TnnState:
    """A pool whose rows hold the states of different prompts (a running batch mid-generation)."""
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, model.config.vocab_size, (slots, 9), generator=generator).to(model.device)
    _, state = model.prefill(prompts)
    pool = model.empty_state(slots)
    pool.copy_rows_(0, state)
    return pool


def clone(state: TnnState) -> TnnState:
    return TnnState(tuple(layer.clone() for layer in state.layers))


def run_steps(step: DecodeStep, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """STEPS greedy steps from `tokens`; the logits and tokens of each."""
    all_logits, all_tokens = [], []
    for _ in range(STEPS):
        logits = step(tokens.tolist()).clone()
        tokens = logits.argmax(-1)
        all_logits.append(logits)
        all_tokens.append(tokens)
    return all_logits, all_tokens


def test_bucket_ladder_covers_every_batch_with_bounded_padding() -> None:
    for max_batch in (1, 3, 8, 40, 256, 512):
        ladder = bucket_ladder(max_batch)
        assert ladder[0] == 1 and ladder[-1] == max_batch and ladder == sorted(set(ladder))
        for batch in range(1, max_batch + 1):
            bucket = next(b for b in ladder if b >= batch)
            assert bucket <= max(2 * batch, batch + 64)  # bounded padding


@pytest.mark.parametrize("batch", [1, 3, 5, 8, 17, SLOTS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_step_equals_the_plain_step(batch: int, dtype: torch.dtype) -> None:
    model = converted_model(dtype=dtype)
    pool = filled_pool(model, SLOTS)
    plain = DecodeStep(model, clone(pool), use_graphs=False)
    padded = DecodeStep(model, clone(pool), use_graphs=False, pad=True)
    assert padded.bucket(batch) is not None and padded.bucket(batch) >= batch
    tokens = torch.arange(batch) % model.config.vocab_size
    plain_logits, plain_tokens = run_steps(plain, tokens)
    padded_logits, padded_tokens = run_steps(padded, tokens)
    for a, b in zip(plain_logits, padded_logits, strict=True):
        assert a.shape == b.shape == (batch, model.config.vocab_size)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(plain_tokens, padded_tokens, strict=True))
    # the running rows advanced identically; the rows above them are free slots and may differ
    for mine, theirs in zip(plain.pool.rows(0, batch).layers, padded.pool.rows(0, batch).layers, strict=True):
        torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-6)


def test_graphs_need_cuda() -> None:
    model = converted_model()
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model"):
        DecodeStep(model, model.empty_state(4), use_graphs=True)


def test_a_step_must_fit_the_pool() -> None:
    model = converted_model()
    step = DecodeStep(model, model.empty_state(4), use_graphs=False, pad=True)
    assert step.capture() == 0.0 and step.describe() == "eager decode step"
    for batch in (0, 5):
        with pytest.raises(ValueError, match=f"a step of {batch} rows on a pool of 4 slots"):
            step([1] * batch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("dtype", "fused"), [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)])
def test_graph_replay_equals_the_eager_step_on_every_bucket(dtype: torch.dtype, fused: bool) -> None:
    model = converted_model("cuda", dtype, fused)
    pool = filled_pool(model, SLOTS)
    graphed = DecodeStep(model, model.empty_state(SLOTS), use_graphs=True)
    graphed.capture()  # garbage in the pool: restore the real rows after it
    assert sorted(graphed.graphs) == graphed.buckets and graphed.describe().startswith("CUDA-graph decode step")
    below = [0, *graphed.buckets[:-1]]
    batches = sorted({*graphed.buckets, *(b + 1 for b in below)})  # every bucket, full and padded
    for batch in batches:
        graphed.pool.copy_rows_(0, pool)
        eager = DecodeStep(model, clone(pool), use_graphs=False, pad=True)  # the same shapes, launched one by one
        tokens = torch.arange(batch, device="cuda") % model.config.vocab_size
        eager_logits, eager_tokens = run_steps(eager, tokens)
        graph_logits, graph_tokens = run_steps(graphed, tokens)
        assert all(torch.equal(a, b) for a, b in zip(eager_tokens, graph_tokens, strict=True)), batch
        for a, b in zip(eager_logits, graph_logits, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
