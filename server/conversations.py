"""Stored responses (`store: true`): each response's record (the Response object as sent) and its conversation (the
chat messages up to and including its answer, which a follow-up's `previous_response_id` continues).

Records live in one SQLite file next to the prefix-state cache's files (`--state-cache-dir`), so they survive a
restart; without that directory they live in memory. The conversation's recurrent state is not here: it is the
prefix-state cache's entry at the boundary where the next turn continues (stored by the engine when the answer
finishes, on disk with its integrity checks when the cache has a disk tier). A follow-up whose state was evicted
is prefilled from the messages stored here, which gives the same output.

Bounded in bytes: least recently used records out first. Each record belongs to the API key that made it (a
sha256 of the key, never the key itself): another key's id is unknown to it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILE_NAME = "responses.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    used REAL NOT NULL,
    nbytes INTEGER NOT NULL,
    record TEXT NOT NULL,
    messages TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class StoredResponse:
    record: dict[str, Any]  # the Response object
    messages: list[dict[str, Any]]  # the conversation through this response's answer (no instructions)


class ResponseStore:
    """id -> StoredResponse, per owner, at most `budget` bytes of JSON. Thread-safe."""

    def __init__(self, path: Path | None, budget: int) -> None:
        self.path = path
        self.budget = budget
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._clock = 0.0
        try:
            self._db, count, nbytes = self._open()
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one: set it aside, start empty
            assert path is not None
            aside = path.with_suffix(".corrupt")
            logger.error("responses: %s is unreadable (%s); moved to %s, starting with no stored responses",
                         path, exc, aside)  # fmt: skip
            path.replace(aside)
            self._db, count, nbytes = self._open()
        if count:
            logger.info("responses: %d stored response(s) (%.1f KiB) in %s", count, nbytes / 1024, path)

    def _now(self) -> float:
        """Strictly increasing use times (two uses within one clock tick keep their order)."""
        self._clock = max(time.time(), self._clock + 1e-6)
        return self._clock

    def _open(self) -> tuple[sqlite3.Connection, int, int]:
        db = sqlite3.connect(":memory:" if self.path is None else str(self.path), check_same_thread=False)
        try:
            with db:
                db.execute(SCHEMA)
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("integrity check failed")
                count, nbytes = db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM responses").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db, int(count), int(nbytes)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM responses").fetchone()[0])

    def put(self, response_id: str, owner: str, stored: StoredResponse) -> int:
        """Store a response, then evict the least recently used ones over the budget; returns how many went."""
        record = json.dumps(stored.record, ensure_ascii=False, separators=(",", ":"))
        messages = json.dumps(stored.messages, ensure_ascii=False, separators=(",", ":"))
        nbytes = len(record.encode()) + len(messages.encode())
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (response_id, owner, self._now(), nbytes, record, messages),
            )
            return self._evict()

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response `owner` stored under `response_id` (now the most recently used), or None."""
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT record, messages FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE responses SET used = ? WHERE id = ?", (self._now(), response_id))
        return StoredResponse(record=json.loads(row[0]), messages=json.loads(row[1]))

    def delete(self, response_id: str, owner: str) -> bool:
        with self._lock, self._db:
            cursor = self._db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner))
            return cursor.rowcount > 0

    def _evict(self) -> int:
        """Delete least recently used records until the budget holds. Caller holds the lock."""
        evicted = 0
        total = self._db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM responses").fetchone()[0]
        while total > self.budget:
            row = self._db.execute("SELECT id, nbytes FROM responses ORDER BY used LIMIT 1").fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM responses WHERE id = ?", (row[0],))
            total -= row[1]
            evicted += 1
        return evicted

    def close(self) -> None:
        with self._lock:
            self._db.close()
