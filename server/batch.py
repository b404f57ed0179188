"""The running batch: the decoding sequences' recurrent state, rows [0, B) of a slot pool allocated once.

The pool is `model.empty_state(slots)`, preallocated at start-up; `model.step` updates `pool.rows(0, B)` in
place, so a decode step copies and allocates no state. A sequence joining the batch has its prefilled state
copied into row B (`copy_rows_`); a finished one is replaced by the last row (one row copied), so the running
rows stay a dense prefix and no step ever carries a hole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from tnn.model.tnn import TnnState

Row = TypeVar("Row")


class RunningBatch(Generic[Row]):
    def __init__(self, pool: TnnState) -> None:
        self.pool = pool  # (slots, ...) per layer, allocated once
        self.rows: list[Row] = []  # rows[i] is the sequence in pool row i

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def capacity(self) -> int:
        return self.pool.batch_size

    @property
    def state(self) -> TnnState:
        """The running rows [0, B) as a view of the pool: stepping it updates the pool in place."""
        return self.pool.rows(0, len(self.rows))

    def add(self, rows: Sequence[Row], state: TnnState) -> None:
        """Append `rows` whose state is `state` (batch = len(rows)), copied into the pool."""
        if state.batch_size != len(rows):
            raise ValueError(f"{len(rows)} rows but state batch {state.batch_size}")
        if len(self.rows) + len(rows) > self.capacity:
            raise ValueError(f"{len(self.rows)} running + {len(rows)} new rows exceed the {self.capacity} slots")
        self.pool.copy_rows_(len(self.rows), state)
        self.rows.extend(rows)

    def remove(self, row: Row) -> None:
        """Drop `row`: the last running row moves into its place (one row copied)."""
        index = self.rows.index(row)
        last = len(self.rows) - 1
        if index != last:
            self.pool.copy_rows_(index, self.pool.rows(last, last + 1))
            self.rows[index] = self.rows[last]
        self.rows.pop()

    def clear(self) -> None:
        self.rows = []

    def state_bytes(self) -> int:
        if not self.rows:  # also an encoder's empty pool, which has no rows at all
            return 0
        return self.pool.nbytes * len(self.rows) // max(self.capacity, 1)
