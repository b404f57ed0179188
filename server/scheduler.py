"""Scheduling pieces with no model in them: the state-slot pool and the per-iteration prefill plan."""

from __future__ import annotations

from collections.abc import Hashable, Sequence


class SlotPool:
    """Fixed number of state slots; a sequence holds one from admission until it finishes or is cancelled."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"need at least one state slot, got {total}")
        self.total = total
        self._free = list(range(total - 1, -1, -1))  # pop() hands out slot 0 first

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.total - len(self._free)

    def acquire(self, count: int) -> list[int] | None:
        """`count` slots, or None (and nothing taken) if fewer are free."""
        if count > len(self._free):
            return None
        return [self._free.pop() for _ in range(count)]

    def release(self, slots: Sequence[int]) -> None:
        for slot in slots:
            if slot in self._free or not 0 <= slot < self.total:
                raise ValueError(f"slot {slot} is not held")
            self._free.append(slot)


def plan_prefill(remaining: Sequence[int], budget: int) -> list[int]:
    """How many prompt tokens each waiting prefill gets this iteration, first come first served.

    remaining: prompt tokens still to prefill per unit, in admission order. The total stays within `budget`
    (a long prompt is chunked and continues next iteration from its carried state), so running decodes wait for
    at most one budget's worth of prefill per step. Returns one chunk length per unit (0: not this time).
    """
    plan = []
    left = budget
    for tokens in remaining:
        chunk = min(tokens, left)
        plan.append(chunk)
        left -= chunk
    return plan


def group_by(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, groups in order of first appearance (prefills that can share one call)."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())
