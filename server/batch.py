"""The running batch: one row of recurrent state per decoding sequence, stepped together.

Rows are kept compact (no idle slots are stepped): `model.step` returns a new state anyway, so the batch is
the state itself. A finished sequence leaves a hole; new sequences fill holes in place (`scatter_`, cost of the
new rows only) and extend the batch otherwise (`cat`); holes left over are removed with one `gather` before the
next step. A preallocated all-slots buffer with gather/scatter around every step would copy the whole running
state twice per token (measured in benchmarks/state_layout.py).
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

    @property
    def active(self) -> list[Row]:
        return [row for row in self.rows if row is not None]

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
