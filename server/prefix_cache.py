"""The prefix-state cache: the recurrent state after an exact token prefix, so a prompt that starts with a cached
prefix prefills only the rest.

A TNN's whole past is one fixed-size state, so one entry per stored boundary is the entire cost of a prefix,
whatever its length. Entries are keyed by their exact tokens in a radix tree (`PrefixIndex`: no hash, no
collision) and checked against the prompt again on every hit. The engine stores a state after a prompt is
prefilled (and every `interval` tokens of a long prompt), when a sequence finishes, and at the template
boundary where a chat's next turn continues.

Memory: least recently used out first, under a byte budget, in host memory by default (on the model's device when
asked). An entry is pinned while a request copies it and is never evicted then. With a `StateDisk`, evicted
and shutdown-time states go to safetensors files and come back on a hit, also after a restart. Evicted states
are written by one writer thread (serialisation, write, fsync outside the lock, off the engine thread); until
written, a hit takes the state back. A failed write (ENOSPC...) degrades the disk tier: that state is dropped,
counted (tnn_prefix_cache_write_errors) and warned about once; nothing fails a request. The cache only
uses the state's public surface: what `gather` returns goes in, a private copy comes out (`tnn.server.state_io`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tnn.model.tnn import TnnLM
from tnn.server.capacity import parse_memory
from tnn.server.metrics import Metrics
from tnn.server.prefix_index import PrefixIndex
from tnn.server.settings import Settings
from tnn.server.state_disk import DiskRecord, StateDisk
from tnn.server.state_io import copy_state, state_from_tensors, state_to_tensors

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_FRACTION = 0.05  # of host RAM (or of device memory with --state-cache-on-device) ...
DEFAULT_MEMORY_CAP = 2 * 2**30  # ... at most this many bytes, when --state-cache-memory is not given
FILE_OVERHEAD = 4096  # bytes of a state file beyond the state and its tokens (header, metadata), at most
IDENTITY_PROBE = 16  # tokens prefilled to fingerprint the recurrent form (conversion method and code)


@dataclass(eq=False)
class _Entry:
    tokens: tuple[int, ...]
    state: Any | None  # a 1-row state on the cache device; None: only on disk
    disk: DiskRecord | None = None
    pins: int = 0  # requests copying it right now: never evicted while > 0
    writing: Any | None = None  # evicted, its file not written yet: the state, still usable


@dataclass(frozen=True)
class PrefixHit:
    """The longest cached prefix of a prompt: `length` tokens, whose state is `state` (pinned until released)."""

    length: int
    state: Any  # on the cache device: copy it, never keep or modify it


class PrefixCache:
    """Token prefix -> recurrent state after it. Thread-safe (the engine thread stores and looks up, the admin
    route clears)."""

    def __init__(
        self,
        *,
        template: Any,
        device: torch.device,
        budget: int,
        metrics: Metrics,
        disk: StateDisk | None = None,
    ) -> None:
        self.template = template  # a 1-row state of the model: the structure states are rebuilt from
        self.device = device  # where cached states live
        self.budget = budget
        self.entry_bytes = template.nbytes
        self.metrics = metrics
        self.disk = disk
        self._index: PrefixIndex[_Entry] = PrefixIndex()
        self._memory: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._writer = None if disk is None else ThreadPoolExecutor(1, thread_name_prefix="tnn-state-disk")
        self._writes: set[Future[None]] = set()
        self._write_failures = 0
        if disk is not None:
            kept, deleted = disk.scan()
            for record in kept:
                self._index.insert(record.tokens, _Entry(record.tokens, None, record))
            self.metrics.prefix_cache_evictions.labels(tier="disk").inc(len(deleted))
            if kept:
                logger.info("prefix cache: %d state(s) (%.1f MiB) reloaded from %s", len(kept),
                            disk.nbytes / 2**20, disk.directory)  # fmt: skip
        self._update_gauges()

    @property
    def memory_bytes(self) -> int:
        return len(self._memory) * self.entry_bytes

    @property
    def capacity(self) -> int:
        """Entries the memory budget holds."""
        return self.budget // self.entry_bytes

    # ---- lookup ---------------------------------------------------------------------------------------------

    @contextmanager
    def lookup(self, tokens: Sequence[int], *, count: bool = True) -> Iterator[PrefixHit | None]:
        """The longest cached prefix of `tokens` that leaves at least one token to prefill (its logits start the
        answer), pinned while the caller copies its state. `count`: a prompt (metrics) rather than a fill."""
        with self._lock:
            entry = self._find(tokens[: len(tokens) - 1])
            if entry is not None:
                entry.pins += 1
            if count:
                self.metrics.prefix_cache_queries.inc(len(tokens))
                self.metrics.prefix_cache_hits.inc(0 if entry is None else len(entry.tokens))
        try:
            yield None if entry is None else PrefixHit(len(entry.tokens), entry.state)
        finally:
            if entry is not None:
                with self._lock:
                    entry.pins -= 1
                    self._evict()  # what a pin held back

    def contains(self, tokens: Sequence[int]) -> bool:
        """Whether the state after exactly `tokens` is cached (in memory or on disk)."""
        with self._lock:
            return self._index.get(tokens) is not None

    def copy_out(self, hit: PrefixHit, device: torch.device) -> Any:
        """A private copy of a hit's state on `device` (the model's)."""
        return copy_state(hit.state, device, self.template)

    def _find(self, tokens: Sequence[int]) -> _Entry | None:
        """The longest entry whose tokens start `tokens`, verified token by token, in memory (from disk if
        needed). Caller holds the lock."""
        while True:
            found = self._index.longest(tokens)
            if found is None:
                return None
            length, entry = found
            if entry.tokens != tuple(tokens[:length]):  # the tree guarantees it; a state is too costly to trust
                logger.error("prefix cache: entry of %d tokens does not match the prompt; dropped", length)
                self._forget(entry)
                continue
            if entry.state is None and entry.writing is not None:  # evicted, still being written: take it back
                entry.state = entry.writing
                self._memory[entry.tokens] = entry
            elif entry.state is None and not self._load(entry):
                continue
            self._memory.move_to_end(entry.tokens)
            return entry

    def _load(self, entry: _Entry) -> bool:
        """Bring a disk-only entry into memory; False (entry forgotten) if its file is unusable."""
        assert self.disk is not None and entry.disk is not None
        tensors = self.disk.read(entry.disk)
        state = None
        if tensors is not None:
            try:
                state = state_from_tensors({k: t.to(self.device) for k, t in tensors.items()}, self.template)
            except ValueError as exc:
                logger.warning("prefix cache: skipping %s: %s", entry.disk.path, exc)
                self.disk.delete(entry.disk)
        if state is None:
            entry.disk = None
            self._forget(entry)
            self._update_gauges()
            return False
        entry.state = state
        self._memory[entry.tokens] = entry
        entry.pins += 1  # not the one to make room
        self._evict()
        entry.pins -= 1
        return True

    # ---- store ----------------------------------------------------------------------------------------------

    def store(self, tokens: Sequence[int], state: Any) -> None:
        """Keep the state after exactly `tokens` (a 1-row state, as `gather` returns it; copied here)."""
        if not tokens or self.entry_bytes > self.budget:
            return
        key = tuple(tokens)
        with self._lock:
            entry = self._index.get(key)
            if entry is not None and entry.state is not None:
                self._memory.move_to_end(key)  # the same prefix again: just fresher
                return
            copy = copy_state(state, self.device, self.template)
            if entry is None:
                entry = _Entry(key, copy)
                self._index.insert(key, entry)
            else:  # known only on disk: the fresh state is as good and saves a read
                entry.state = copy
            self._memory[key] = entry
            self._evict()

    def _evict(self) -> None:
        """Least recently used unpinned entries out until the memory budget holds; to disk when there is one."""
        over = self.memory_bytes - self.budget
        if over > 0:
            for entry in [e for e in self._memory.values() if e.pins == 0]:
                if over <= 0:
                    break
                self._memory.pop(entry.tokens)
                if self.disk is not None and entry.disk is None and entry.writing is None:
                    entry.writing = entry.state
                    self._schedule_write(entry)
                entry.state = None
                if entry.disk is None and entry.writing is None:
                    self._forget(entry)
                self.metrics.prefix_cache_evictions.labels(tier="memory").inc()
                over -= self.entry_bytes
        self._update_gauges()

    def _schedule_write(self, entry: _Entry) -> None:
        assert self._writer is not None
        future = self._writer.submit(self._write, entry)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    def _write(self, entry: _Entry) -> None:
        """Writer thread: the file of an evicted entry; only the index updates take the lock."""
        assert self.disk is not None
        with self._lock:
            state = entry.writing
            if state is None or self._index.get(entry.tokens) is not entry:  # cleared meanwhile
                entry.writing = None
                return
        try:
            data = self.disk.encode(entry.tokens, state_to_tensors(state))
            if len(data) > self.disk.budget:
                raise OSError(f"a state file of {len(data)} bytes exceeds --state-cache-disk")
            with self._lock:
                self._dropped(self.disk.make_room(len(data)))
            path = self.disk.write_file(entry.tokens, data)
        except Exception as exc:
            self._write_failed(entry, exc)
            return
        with self._lock:
            entry.writing = None
            if self._index.get(entry.tokens) is entry:
                entry.disk = self.disk.register(entry.tokens, path)
            else:  # cleared while writing: the file goes too
                path.unlink(missing_ok=True)
            self._update_gauges()

    def _write_failed(self, entry: _Entry, exc: Exception) -> None:
        """Degrade, never fail: the state is dropped from the disk tier (kept if a hit took it back)."""
        self.metrics.prefix_cache_write_errors.inc()
        self._write_failures += 1
        if self._write_failures == 1:
            logger.warning("prefix cache: a disk-tier write failed (%s); evicted states that cannot be written "
                           "are dropped (tnn_prefix_cache_write_errors counts them; warned once)", exc)  # fmt: skip
        with self._lock:
            entry.writing = None
            if entry.state is None:
                self._forget(entry)
            self._update_gauges()

    def flush(self) -> None:
        """Wait until every scheduled disk write is done (tests, shutdown)."""
        while self._writes:
            for future in list(self._writes):
                future.result()

    def _dropped(self, deleted: list[DiskRecord]) -> None:
        """Entries whose files the disk tier deleted to make room. Caller holds the lock."""
        for gone in deleted:
            self.metrics.prefix_cache_evictions.labels(tier="disk").inc()
            other = self._index.get(gone.tokens)
            if other is not None:
                other.disk = None
                if other.state is None and other.writing is None:
                    self._forget(other)

    def _forget(self, entry: _Entry) -> None:
        if self._index.get(entry.tokens) is entry:
            self._index.remove(entry.tokens)
        self._memory.pop(entry.tokens, None)

    # ---- admin and shutdown ---------------------------------------------------------------------------------

    def clear(self) -> dict[str, int]:
        """Drop every entry, in memory and on disk. Returns how many of each were dropped."""
        with self._lock:
            memory = len(self._memory)
            disk = self.disk.clear() if self.disk is not None else 0
            self._index = PrefixIndex()
            self._memory.clear()  # a pinned entry's state stays alive with the request copying it
            self._update_gauges()
        logger.info("prefix cache cleared: %d state(s) in memory, %d on disk", memory, disk)
        return {"memory_entries": memory, "disk_entries": disk}

    def close(self) -> None:
        """Write the states still only in memory to disk, most recently used first, as many as the disk budget
        holds (older files make room first)."""
        if self.disk is None or self._writer is None:
            return
        self.flush()
        self._writer.shutdown(wait=True)
        with self._lock:
            pending = [e for e in reversed(self._memory.values()) if e.disk is None]
            written = 0
            for entry in pending:
                if written + self.entry_bytes + 8 * len(entry.tokens) + FILE_OVERHEAD > self.disk.budget:
                    break
                entry.writing = entry.state
                self._write(entry)
                written += entry.disk.nbytes if entry.disk is not None else 0
            for entry in self._memory.values():  # file times in use order: a restart evicts the stalest first
                if entry.disk is not None:
                    self.disk.touch(entry.disk)
            self._update_gauges()
        logger.info("prefix cache: %d state(s) written to %s at shutdown (%d files, %.1f MiB)", len(pending),
                    self.disk.directory, len(self.disk.records), self.disk.nbytes / 2**20)  # fmt: skip

    def _update_gauges(self) -> None:
        m = self.metrics
        m.prefix_cache_entries.labels(tier="memory").set(len(self._memory))
        m.prefix_cache_bytes.labels(tier="memory").set(self.memory_bytes)
        m.prefix_cache_entries.labels(tier="disk").set(0 if self.disk is None else len(self.disk.records))
        m.prefix_cache_bytes.labels(tier="disk").set(0 if self.disk is None else self.disk.nbytes)


def cache_boundaries(start: int, length: int, interval: int, extra: Sequence[int] = ()) -> list[int]:
    """Positions in (start, length] where a prompt's prefill stops to store its state: every `interval` tokens
    (0: none), the `extra` ones (e.g. the end of a chat's system prompt) and the prompt's end."""
    stops = {p for p in extra if start < p < length}
    if interval > 0:
        stops.update(range((start // interval + 1) * interval, length, interval))
    stops.add(length)
    return sorted(stops)


def default_budget(device: torch.device) -> int:
    """DEFAULT_MEMORY_FRACTION of the cache device's memory, at most DEFAULT_MEMORY_CAP."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(int(total * DEFAULT_MEMORY_FRACTION), DEFAULT_MEMORY_CAP)


def model_identity(model: TnnLM) -> str:
    """sha256 of what a cached state depends on: config, weights, dtype, the state's layout and the state after a
    fixed probe (which catches a different conversion of the same weights). Files of another identity are
    never read."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    probe = torch.arange(IDENTITY_PROBE, device=model.device)[None] % model.config.vocab_size  # (1, P)
    with torch.inference_mode():
        _, state = model.prefill(probe)
    for name, tensor in sorted(state_to_tensors(state).items()):
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        # rounded: the last bits of a reduction may differ with the thread count; the layout may not
        h.update(torch.view_as_real(tensor.to("cpu")).to(torch.float16).numpy().tobytes()
                 if tensor.is_complex() else tensor.to("cpu", torch.float16).numpy().tobytes())  # fmt: skip
    return h.hexdigest()


def build_prefix_cache(model: TnnLM, settings: Settings, metrics: Metrics) -> PrefixCache | None:
    """The cache `settings` ask for, or None when disabled (--state-cache-memory 0)."""
    device = model.device if settings.state_cache_on_device else torch.device("cpu")
    budget = (
        default_budget(device)
        if settings.state_cache_memory is None
        else parse_memory(settings.state_cache_memory, allow_zero=True).resolve(device)
    )
    if budget == 0:
        logger.info("prefix cache disabled (--state-cache-memory 0)")
        return None
    template = model.empty_state(1)
    disk = None
    if settings.state_cache_dir is not None:
        directory = Path(settings.state_cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        disk_budget = parse_memory(settings.state_cache_disk).of_free(lambda: shutil.disk_usage(directory).free)
        disk = StateDisk(directory, identity=model_identity(model), budget=disk_budget)
    cache = PrefixCache(template=template, device=device, budget=budget, metrics=metrics, disk=disk)
    logger.info(
        "prefix cache: %.1f MiB on %s = %d states of %.1f KiB; a state every %s prompt tokens%s",
        budget / 2**20, device, cache.capacity, cache.entry_bytes / 1024, settings.state_cache_interval or "no",
        "" if disk is None else f"; disk tier {disk.directory} ({disk.budget / 2**20:.0f} MiB)",
    )  # fmt: skip
    return cache
