"""The slot pool's size: --state-memory parsing, slots = min(max_num_seqs, budget // state bytes), the startup
log line, and the running batch's in-place rows (joins copy into the pool, leaves move the last row)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

import tnn.model
from tests.support import ServerProcess, metric_value, scrape_metrics
from tnn.cli.main import main
from tnn.server.batch import RunningBatch
from tnn.server.capacity import MemoryBudget, free_memory, parse_memory, plan_slots
from tnn.server.metrics import Metrics
from tnn.server.prefix_cache import build_prefix_cache
from tnn.server.settings import Settings

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", MemoryBudget(bytes=2 * 2**30)),
        ("512MiB", MemoryBudget(bytes=512 * 2**20)),
        ("1.5GB", MemoryBudget(bytes=1_500_000_000)),
        ("1000000", MemoryBudget(bytes=1_000_000)),
        ("64k", MemoryBudget(bytes=64 * 1024)),
        ("0.25", MemoryBudget(fraction=0.25)),
        ("1", MemoryBudget(fraction=1.0)),
    ],
)
def test_memory_amounts_parse(text: str, expected: MemoryBudget) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "2 parsecs", "-1GiB", "0", "0.0", "1e-10GiB"])
def test_bad_memory_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--state-memory"):
        parse_memory(text)


def test_slots_are_the_budget_over_the_state_bytes_capped_by_max_num_seqs() -> None:
    plan = plan_slots(MemoryBudget(bytes=10_000), 3_000, max_num_seqs=100, device=CPU)
    assert (plan.slots, plan.capped, plan.pool_bytes) == (3, False, 9_000)
    plan = plan_slots(MemoryBudget(bytes=10**9), 3_000, max_num_seqs=100, device=CPU)
    assert (plan.slots, plan.capped) == (100, True)
    assert "100 state slots x 2.93 KiB" in plan.describe()
    with pytest.raises(ValueError, match="holds no sequence"):
        plan_slots(MemoryBudget(bytes=2_999), 3_000, max_num_seqs=100, device=CPU)
    free = free_memory(CPU)
    fraction = plan_slots(MemoryBudget(fraction=0.5), 1, max_num_seqs=10**12, device=CPU).slots
    assert 0.4 * free <= fraction <= 0.6 * free  # free memory moves a little between the two reads


def test_running_batch_steps_the_pool_in_place(tiny_model_dir: Path) -> None:
    model = tnn.model.load(tiny_model_dir)
    if not model.is_converted:
        tnn.model.attach_ssm(model)
    pool = model.empty_state(4)
    batch: RunningBatch[str] = RunningBatch(pool)
    prompts = {name: torch.tensor([[0, 5 + i, 9, 7 + 2 * i]]) for i, name in enumerate("abc")}
    prefilled = {name: model.prefill(tokens)[1] for name, tokens in prompts.items()}
    for name in "abc":
        batch.add([name], prefilled[name])
    token = torch.tensor([3, 3, 3])
    logits, state = model.step(token, batch.state)
    assert all(s.data_ptr() == p.data_ptr() for s, p in zip(state.layers, pool.layers, strict=True))  # no copy
    batch.remove("a")  # "c" moves into row 0
    assert batch.rows == ["c", "b"]
    alone = {name: model.step(torch.tensor([3]), prefilled[name])[0] for name in "abc"}  # each alone, in place
    for row, name in enumerate("abc"):
        torch.testing.assert_close(logits[row], alone[name][0], rtol=1e-5, atol=1e-5)
    next_logits, _ = model.step(torch.tensor([4, 4]), batch.state)
    for row, name in enumerate(batch.rows):
        expected, _ = model.step(torch.tensor([4]), prefilled[name])
        torch.testing.assert_close(next_logits[row], expected[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceed the 4 slots"):
        batch.add(["d", "e", "f"], model.empty_state(3))


def test_state_memory_sizes_the_pool_and_the_log_says_so(tiny_model_dir: Path) -> None:
    per_sequence = tnn.model.attach_ssm(tnn.model.load(tiny_model_dir)).state_bytes_per_sequence()
    args = ["--state-memory", str(3 * per_sequence + per_sequence // 2), "--max-num-seqs", "64", "--no-warmup"]
    with ServerProcess(tiny_model_dir, args=args) as server:
        samples = scrape_metrics(server.url)
        assert metric_value(samples, "tnn_state_slots_total") == 3
        body = {"prompt": "To be", "max_tokens": 2, "n": 4}
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 400 and "at most 3" in response.json()["error"]["message"]
    assert "3 state slots x" in server.log() and "limited by --state-memory" in server.log()


def test_a_budget_below_one_sequence_fails_at_startup(tiny_model_dir: Path) -> None:
    server = ServerProcess(tiny_model_dir, args=["--state-memory", "16", "--no-warmup"], ready_timeout=60)
    with pytest.raises(RuntimeError, match="exited with 1 before ready") as failure:
        server.start()
    assert "holds no sequence" in str(failure.value)


def test_bad_state_memory_flag_exits_2() -> None:
    assert main(["serve", "--state-memory", "lots"]) == 2


@pytest.mark.parametrize("field", ["state_memory", "state_cache_memory", "state_cache_disk"])
def test_every_size_flag_reads_sizes_alike(field: str, tmp_path: Path) -> None:
    """One parser, one meaning: 64k is 65,536 bytes and 0.25 a fraction of what is free, for every flag."""
    for text, expected in [("64k", MemoryBudget(bytes=65_536)), ("0.25", MemoryBudget(fraction=0.25))]:
        value = getattr(Settings(model_dir=tmp_path, **{field: text}), field)
        assert parse_memory(value) == expected
    with pytest.raises(ValueError, match="--" + field.replace("_", "-")):
        Settings(model_dir=tmp_path, **{field: "lots"})


def test_a_cache_fraction_is_of_free_memory_and_zero_turns_it_off(tiny_model_dir: Path) -> None:
    model = tnn.model.load(tiny_model_dir)
    quarter = build_prefix_cache(model, Settings(model_dir=tiny_model_dir, state_cache_memory="0.25"), Metrics())
    assert quarter is not None and abs(quarter.budget - 0.25 * free_memory(CPU)) < 0.05 * free_memory(CPU)
    assert build_prefix_cache(model, Settings(model_dir=tiny_model_dir, state_cache_memory="0"), Metrics()) is None
