"""The prefix cache's disk tier: one safetensors file per cached state, bounded in bytes, written atomically.

A file holds the state's tensors, the exact token prefix (`__tokens__`) and, in its metadata, the format, the
model identity and a sha256 of the tensor bytes. On start the directory is scanned (headers and tokens only);
files of another model are left alone and never read, a corrupt file is skipped with a warning. The oldest
files (by last use) go first when the directory would exceed its budget.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

logger = logging.getLogger(__name__)

FORMAT = "tnn-prefix-state/1"
TOKENS = "__tokens__"
SUFFIX = ".safetensors"


@dataclass(eq=False)
class DiskRecord:
    path: Path
    tokens: tuple[int, ...]
    nbytes: int  # file size


class StateDisk:
    """Files of one model in `directory`, at most `budget` bytes of them, least recently used first out."""

    def __init__(self, directory: str | Path, *, identity: str, budget: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.budget = budget
        self.records: OrderedDict[Path, DiskRecord] = OrderedDict()  # oldest use first
        self.nbytes = 0
        self._clock = 0.0

    def scan(self) -> tuple[list[DiskRecord], list[DiskRecord]]:
        """Index this model's files, oldest use first. Returns (kept, deleted to fit the budget)."""
        for stale in self.directory.glob(".*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)
        others = 0
        paths = sorted(self.directory.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime)
        for path in paths:
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    if meta.get("format") != FORMAT or meta.get("model") != self.identity:
                        others += 1
                        continue
                    tokens = tuple(f.get_tensor(TOKENS).tolist())
            except Exception as exc:  # truncated or garbled header: not ours to trust
                logger.warning("prefix cache: skipping unreadable file %s: %s", path, exc)
                continue
            record = DiskRecord(path, tokens, path.stat().st_size)
            self.records[path] = record
            self.nbytes += record.nbytes
        if others:
            logger.info("prefix cache: %d file(s) in %s belong to another model or format; ignored",
                        others, self.directory)  # fmt: skip
        return list(self.records.values()), self._fit(0)

    def write(self, tokens: Sequence[int], tensors: dict[str, Tensor]) -> tuple[DiskRecord | None, list[DiskRecord]]:
        """Write one state atomically (temp file, fsync, rename). Returns (its record or None if it can never
        fit the budget, the records deleted to make room)."""
        key = hashlib.sha256(self.identity.encode() + torch.tensor(list(tokens), dtype=torch.int64).numpy().tobytes())
        path = self.directory / (key.hexdigest()[:40] + SUFFIX)
        body = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        metadata = {"format": FORMAT, "model": self.identity, "sha256": _digest(body)}
        data = save({**body, TOKENS: torch.tensor(list(tokens), dtype=torch.int64)}, metadata=metadata)
        if len(data) > self.budget:
            return None, []
        deleted = self._fit(len(data))
        temporary = self.directory / f".{path.name}.{os.getpid()}.tmp"
        with temporary.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        old = self.records.pop(path, None)
        if old is not None:
            self.nbytes -= old.nbytes
        record = DiskRecord(path, tuple(tokens), len(data))
        self.records[path] = record
        self.nbytes += record.nbytes
        return record, deleted

    def read(self, record: DiskRecord) -> dict[str, Tensor] | None:
        """The state tensors of `record` (checked: model, tokens, checksum); None, with a warning, if the file
        is gone or corrupt (it is then dropped from the index)."""
        try:
            with safe_open(str(record.path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            tokens = tuple(tensors.pop(TOKENS).tolist())
            problem = None
            if meta.get("model") != self.identity:
                problem = "another model's state"
            elif tokens != record.tokens:
                problem = "its tokens changed"
            elif meta.get("sha256") != _digest(tensors):
                problem = "checksum mismatch"
        except Exception as exc:
            problem = str(exc)
        if problem is not None:
            logger.warning("prefix cache: skipping corrupt file %s: %s", record.path, problem)
            self._drop(record)
            return None
        self.touch(record)
        return tensors

    def touch(self, record: DiskRecord) -> None:
        """Mark `record` as the most recently used (also in its file time, for the next scan)."""
        self.records.move_to_end(record.path)
        self._clock = max(time.time(), self._clock + 1e-3)  # strictly increasing, even within a clock tick
        os.utime(record.path, (self._clock, self._clock))

    def delete(self, record: DiskRecord) -> None:
        self._drop(record)
        record.path.unlink(missing_ok=True)

    def clear(self) -> int:
        """Delete every file of this model; returns how many."""
        records = list(self.records.values())
        for record in records:
            self.delete(record)
        return len(records)

    def _drop(self, record: DiskRecord) -> None:
        if self.records.pop(record.path, None) is not None:
            self.nbytes -= record.nbytes

    def _fit(self, incoming: int) -> list[DiskRecord]:
        """Delete the least recently used files until `incoming` more bytes fit."""
        deleted = []
        while self.records and self.nbytes + incoming > self.budget:
            _, oldest = next(iter(self.records.items()))
            self.delete(oldest)
            deleted.append(oldest)
        return deleted


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()
