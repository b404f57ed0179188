"""Slots, the prefill plan and the running batch on its slot pool, without a server."""

from __future__ import annotations

import pytest
import torch

from tnn.model.tnn import TnnState
from tnn.server.batch import RunningBatch
from tnn.server.scheduler import SlotBudget, group_by, plan_prefill


def test_slot_budget_acquire_release() -> None:
    budget = SlotBudget(3)
    assert budget.acquire(2) and budget.used == 2
    assert not budget.acquire(2) and budget.used == 2  # all or nothing
    budget.release()
    assert budget.free == 2
    budget.release()
    with pytest.raises(ValueError, match="0 in use"):
        budget.release()
    with pytest.raises(ValueError, match="need at least one"):
        SlotBudget(0)


def test_plan_prefill_respects_budget_in_order() -> None:
    assert plan_prefill([100, 30, 10], budget=64) == [64, 0, 0]
    assert plan_prefill([10, 30, 50], budget=64) == [10, 30, 24]
    assert plan_prefill([], budget=8) == []


def test_group_by_keeps_first_appearance_order() -> None:
    assert group_by([(4, True), (2, True), (4, True), (4, False)]) == [[0, 2], [1], [3]]


def state_of(values: list[float]) -> TnnState:
    """A one-layer state whose row i is filled with values[i]: (B, 1, 2)."""
    return TnnState((torch.tensor(values, dtype=torch.float32)[:, None, None].expand(-1, 1, 2).contiguous(),))


def row_values(batch: RunningBatch[str]) -> list[float]:
    return batch.state.layers[0][:, 0, 0].tolist()


def test_running_batch_is_a_dense_prefix_of_the_pool() -> None:
    pool = state_of([0, 0, 0, 0, 0])
    batch: RunningBatch[str] = RunningBatch(pool)
    batch.add(["a", "b", "c"], state_of([1, 2, 3]))
    assert batch.state.layers[0].data_ptr() == pool.layers[0].data_ptr()  # a view: stepping it writes the pool
    batch.remove("a")  # the last row moves into the hole
    assert batch.rows == ["c", "b"] and row_values(batch) == [3, 2]
    batch.add(["d", "e"], state_of([4, 5]))  # appended after the running rows
    assert batch.rows == ["c", "b", "d", "e"] and row_values(batch) == [3, 2, 4, 5]
    batch.remove("e")  # the last row: nothing moves
    assert batch.rows == ["c", "b", "d"] and row_values(batch) == [3, 2, 4]
    assert batch.state_bytes() == 3 * pool.nbytes // 5


def test_running_batch_refuses_more_rows_than_slots() -> None:
    batch: RunningBatch[str] = RunningBatch(state_of([0, 0]))
    batch.add(["a"], state_of([1]))
    with pytest.raises(ValueError, match="exceed the 2 slots"):
        batch.add(["b", "c"], state_of([2, 3]))
    with pytest.raises(ValueError, match="state batch"):
        batch.add(["b"], state_of([2, 3]))
    batch.clear()
    assert len(batch) == 0 and batch.state_bytes() == 0
