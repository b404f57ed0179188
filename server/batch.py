"""The running batch: one row of recurrent state per decoding sequence, stepped together.

`model.step` returns a new state anyway, so the batch is the state itself, with no idle slots in it. A finished
sequence leaves a hole; new sequences fill holes in place (`scatter_`, the cost of the new rows only) and extend
the batch otherwise (`cat`); `compact` removes holes with one `gather` (the engine does so once no newcomer is
waiting). A preallocated all-slots buffer with gather/scatter around every step copies the whole running state
twice per token: 1.3-1.5x slower per step (benchmarks/state_layout.py, results/state_layout.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from tnn.model.tnn import TnnState

Row = TypeVar("Row")


class RunningBatch(Generic[Row]):
    def __init__(self) -> None:
        self.rows: list[Row | None] = []  # None: a hole left by a finished sequence
        self.state: TnnState | None = None  # batch = len(rows)

    def __len__(self) -> int:
        return sum(row is not None for row in self.rows)

    def add(self, rows: Sequence[Row], state: TnnState) -> None:
        """Join `rows` whose state is `state` (batch = len(rows)): holes first, then appended."""
        if state.batch_size != len(rows):
            raise ValueError(f"{len(rows)} rows but state batch {state.batch_size}")
        holes = [i for i, row in enumerate(self.rows) if row is None][: len(rows)]
        if holes:
            assert self.state is not None
            self.state.scatter_(holes, state.gather(list(range(len(holes)))) if len(holes) < len(rows) else state)
            for hole, row in zip(holes, rows, strict=False):
                self.rows[hole] = row
        rest = list(rows[len(holes) :])
        if rest:
            tail = state.gather(list(range(len(holes), len(rows)))) if holes else state
            self.state = tail if self.state is None else TnnState.cat([self.state, tail])
            self.rows.extend(rest)

    def remove(self, row: Row) -> None:
        """Leave a hole where `row` was (its state is dropped at the next compact)."""
        self.rows[self.rows.index(row)] = None

    def compact(self) -> None:
        """Drop the holes so that every stepped row is a live sequence."""
        keep = [i for i, row in enumerate(self.rows) if row is not None]
        if len(keep) == len(self.rows):
            return
        self.state = self.state.gather(keep) if keep and self.state is not None else None
        self.rows = [self.rows[i] for i in keep]

    def state_bytes(self) -> int:
        return 0 if self.state is None else self.state.nbytes
