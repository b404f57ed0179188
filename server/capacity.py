"""How many state slots the engine preallocates: a state-memory budget divided by the bytes one sequence holds.

Every size flag (`--state-memory`, `--state-cache-memory`, `--state-cache-disk`) is read by `parse_memory`, with
one meaning: bytes (`2GiB`, `512MiB`, `1.5GB`, `64k` = 64 KiB as in docker, `1000000`) or a fraction in (0, 1] of
what is free where the budget lives at start-up (host RAM on CPU, device memory on CUDA, disk space for the disk
tier). `--max-num-seqs` caps the slots: slots = min(max_num_seqs, budget // bytes per sequence).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,  # as in docker/kubectl shorthands: binary
}  # fmt: skip
_AMOUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class MemoryBudget:
    """Either an absolute number of bytes or a fraction of the free memory (exactly one is set)."""

    bytes: int | None = None
    fraction: float | None = None

    def resolve(self, device: torch.device) -> int:
        """The budget in bytes on `device` (a fraction is taken of the memory free now)."""
        return self.of_free(lambda: free_memory(device))

    def of_free(self, free: Callable[[], int]) -> int:
        """The budget in bytes, a fraction taken of `free()` bytes."""
        if self.bytes is not None:
            return self.bytes
        assert self.fraction is not None
        return int(self.fraction * free())

    def describe(self) -> str:
        if self.bytes is not None:
            return format_bytes(self.bytes)
        return f"{self.fraction:g} of free memory"


def parse_memory(text: str | int, *, flag: str = "--state-memory", allow_zero: bool = False) -> MemoryBudget:
    """'2GiB', '512MiB', '1.5GB', '1000000' (bytes) or '0.25' (a fraction of what is free); '0' (0 bytes) only
    with `allow_zero`. ValueError naming `flag` otherwise."""
    match = _AMOUNT.match(str(text))
    if match is None or match.group(2).lower() not in UNITS:
        raise ValueError(f"{flag} must be bytes like 2GiB, 512MiB or 1000000, or a fraction like 0.25; got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    if number == 0 and allow_zero:
        return MemoryBudget(bytes=0)
    if not unit and number <= 1.0:
        if number <= 0:
            raise ValueError(f"{flag}: a fraction must be in (0, 1], got {text!r}")
        return MemoryBudget(fraction=number)
    amount = int(number * UNITS[unit])
    if amount < 1:
        raise ValueError(f"{flag} must be at least 1 byte, got {text!r}")
    return MemoryBudget(bytes=amount)


def free_memory(device: torch.device) -> int:
    """Bytes free now: device memory on CUDA, available host RAM (MemAvailable) otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class SlotPlan:
    slots: int
    bytes_per_sequence: int
    budget_bytes: int
    capped: bool  # True: max_num_seqs, not the budget, set the count

    @property
    def pool_bytes(self) -> int:
        return self.slots * self.bytes_per_sequence

    def describe(self) -> str:
        limit = "capped by --max-num-seqs" if self.capped else "limited by --state-memory"
        return (
            f"{self.slots} state slots x {format_bytes(self.bytes_per_sequence)} = {format_bytes(self.pool_bytes)} "
            f"(budget {format_bytes(self.budget_bytes)}, {limit})"
        )


def plan_slots(budget: MemoryBudget, bytes_per_sequence: int, max_num_seqs: int, device: torch.device) -> SlotPlan:
    """Slots = min(max_num_seqs, budget // bytes_per_sequence); ValueError if the budget holds no sequence."""
    budget_bytes = budget.resolve(device)
    fit = budget_bytes // max(bytes_per_sequence, 1)
    if fit < 1:
        raise ValueError(
            f"--state-memory {budget.describe()} ({format_bytes(budget_bytes)}) holds no sequence: one needs "
            f"{format_bytes(bytes_per_sequence)} of recurrent state"
        )
    return SlotPlan(min(fit, max_num_seqs), bytes_per_sequence, budget_bytes, capped=fit >= max_num_seqs)


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"
