"""Scheduling pieces with no model in them: the state-slot count and the per-iteration prefill plan."""

from __future__ import annotations

from collections.abc import Hashable, Sequence


class SlotBudget:
    """How many of a fixed number of state slots are in use: a sequence counts one from admission until it
    finishes or is cancelled. Only a count: where a sequence's state lives is the running batch's row order."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"need at least one state slot, got {total}")
        self.total = total
        self.used = 0

    @property
    def free(self) -> int:
        return self.total - self.used

    def acquire(self, count: int) -> bool:
        """Count `count` more slots in use, or return False (and count nothing) if fewer are free."""
        if count > self.free:
            return False
        self.used += count
        return True

    def release(self, count: int = 1) -> None:
        if not 0 < count <= self.used:
            raise ValueError(f"cannot release {count} slot(s): {self.used} in use")
        self.used -= count


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
