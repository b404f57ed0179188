"""Slots, the prefill plan and the running batch's hole filling, without a server."""

from __future__ import annotations

import pytest
import torch

from tnn.model.tnn import TnnState
from tnn.server.batch import RunningBatch
from tnn.server.scheduler import SlotPool, group_by, plan_prefill


def test_slot_pool_acquire_release() -> None:
    pool = SlotPool(3)
    assert pool.acquire(2) == [0, 1]
    assert pool.acquire(2) is None and pool.used == 2  # all or nothing
    pool.release([0])
    assert pool.free == 2
    with pytest.raises(ValueError, match="not held"):
        pool.release([0])


def test_plan_prefill_respects_budget_in_order() -> None:
    assert plan_prefill([100, 30, 10], budget=64) == [64, 0, 0]
    assert plan_prefill([10, 30, 50], budget=64) == [10, 30, 24]
    assert plan_prefill([], budget=8) == []


def test_group_by_keeps_first_appearance_order() -> None:
    assert group_by([(4, True), (2, True), (4, True), (4, False)]) == [[0, 2], [1], [3]]


def state_of(values: list[float]) -> TnnState:
    """A one-layer state whose row i is filled with values[i]: (B, 1, 2) complex."""
    rows = torch.tensor(values, dtype=torch.float32)[:, None, None].expand(-1, 1, 2)
    return TnnState((torch.complex(rows, torch.zeros_like(rows)).contiguous(),))


def row_values(batch: RunningBatch[str]) -> list[float]:
    assert batch.state is not None
    return batch.state.layers[0][:, 0, 0].real.tolist()


def test_running_batch_fills_holes_in_place_then_appends() -> None:
    batch: RunningBatch[str] = RunningBatch()
    batch.add(["a", "b", "c"], state_of([1, 2, 3]))
    batch.remove("b")
    assert len(batch) == 2 and batch.rows == ["a", None, "c"]
    batch.add(["d", "e"], state_of([4, 5]))  # d fills b's hole, e is appended
    assert batch.rows == ["a", "d", "c", "e"]
    assert row_values(batch) == [1, 4, 3, 5]


def test_running_batch_compacts_leftover_holes() -> None:
    batch: RunningBatch[str] = RunningBatch()
    batch.add(["a", "b", "c"], state_of([1, 2, 3]))
    batch.remove("a")
    batch.remove("c")
    batch.compact()
    assert batch.rows == ["b"] and row_values(batch) == [2]
    batch.remove("b")
    batch.compact()
    assert batch.rows == [] and batch.state is None and batch.state_bytes() == 0
