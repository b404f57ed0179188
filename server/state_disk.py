"""The prefix cache's disk tier: one safetensors file per cached state, bounded in bytes, written atomically.

A file holds the state's tensors, the exact token prefix (`__tokens__`) and, in its metadata, the format, the
model identity and a sha256 over the format, the identity and every tensor (the tokens included: a flipped bit
in a token id must not serve another prompt's state). On start the directory is scanned (headers and tokens
only); files of another model are left alone and never read, a corrupt file or anything that is not a regular
file (a symlink, a FIFO) is skipped with a warning. The oldest files (by last use) go first when the directory
would exceed its budget.

Not thread-safe: the prefix cache serialises calls under its lock, except `encode` and `write_file`, which touch
no index and run on its writer thread (the file I/O and fsync stay off the engine thread and outside the lock).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
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

FORMAT = "tnn-prefix-state/2"  # /1 files (tokens outside the checksum) are another format: never read
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
        paths = sorted((p for p in self.directory.glob("*" + SUFFIX) if _regular(p)), key=lambda p: p.stat().st_mtime)
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
        fit the budget, the records deleted to make room). OSError (ENOSPC...) leaves no temp file behind."""
        data = self.encode(tokens, tensors)
        if len(data) > self.budget:
            return None, []
        deleted = self.make_room(len(data))
        return self.register(tokens, self.write_file(tokens, data)), deleted

    def encode(self, tokens: Sequence[int], tensors: dict[str, Tensor]) -> bytes:
        """The file's bytes: the tensors, the tokens and the checksummed metadata."""
        body = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        body[TOKENS] = torch.tensor(list(tokens), dtype=torch.int64)
        return save(body, metadata={"format": FORMAT, "model": self.identity, "sha256": self._checksum(body)})

    def make_room(self, incoming: int) -> list[DiskRecord]:
        """Delete the least recently used files until `incoming` more bytes fit; the records deleted."""
        return self._fit(incoming)

    def write_file(self, tokens: Sequence[int], data: bytes) -> Path:
        """Write `data` as the file of `tokens`: temp file, fsync, rename (touches no index). OSError on failure,
        the temp file removed."""
        path = self.path_of(tokens)
        temporary = self.directory / f".{path.name}.{os.getpid()}.tmp"
        try:
            with temporary.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        return path

    def register(self, tokens: Sequence[int], path: Path) -> DiskRecord:
        """Index a file `write_file` wrote."""
        old = self.records.pop(path, None)
        if old is not None:
            self.nbytes -= old.nbytes
        record = DiskRecord(path, tuple(tokens), path.stat().st_size)
        self.records[path] = record
        self.nbytes += record.nbytes
        return record

    def path_of(self, tokens: Sequence[int]) -> Path:
        key = hashlib.sha256(self.identity.encode() + torch.tensor(list(tokens), dtype=torch.int64).numpy().tobytes())
        return self.directory / (key.hexdigest()[:40] + SUFFIX)

    def _checksum(self, tensors: dict[str, Tensor]) -> str:
        """sha256 of every header field (format, model) and every tensor, tokens included."""
        return _digest(tensors, prefix=f"{FORMAT}\0{self.identity}\0".encode())

    def read(self, record: DiskRecord) -> dict[str, Tensor] | None:
        """The state tensors of `record` (checked: model, tokens, checksum); None, with a warning, if the file
        is gone or corrupt (it is then dropped from the index)."""
        try:
            if not _regular(record.path):
                raise ValueError("not a regular file")
            with safe_open(str(record.path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            problem = None
            if meta.get("model") != self.identity or meta.get("format") != FORMAT:
                problem = "another model's state"
            elif meta.get("sha256") != self._checksum(tensors):
                problem = "checksum mismatch"
            elif tuple(tensors[TOKENS].tolist()) != record.tokens:
                problem = "its tokens changed"
            tensors.pop(TOKENS)
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
        try:
            os.utime(record.path, (self._clock, self._clock))
        except OSError as exc:  # removed or read-only: the order is only a hint for the next start
            logger.debug("prefix cache: cannot touch %s: %s", record.path, exc)

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


def _regular(path: Path) -> bool:
    """Whether `path` is a regular file (not a symlink, FIFO, device or directory); warns when not."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        logger.warning("prefix cache: skipping %s: %s", path, exc)
        return False
    if not stat.S_ISREG(mode):
        logger.warning("prefix cache: skipping %s: not a regular file", path)
        return False
    return True


def _digest(tensors: dict[str, Tensor], prefix: bytes = b"") -> str:
    h = hashlib.sha256(prefix)
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()
