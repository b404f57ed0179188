"""The stored-response records (tnn.server.conversations): per-owner lookup, least-recently-used eviction under the
byte budget, persistence across reopening, and a damaged file set aside instead of failing the server."""

from __future__ import annotations

from pathlib import Path

from tnn.server.conversations import ResponseStore, StoredResponse


def stored(n: int) -> StoredResponse:
    return StoredResponse(record={"id": f"resp_{n}", "output": "x" * 100},
                          messages=[{"role": "user", "content": "y" * 100}])  # fmt: skip


def test_owner_scope_and_delete(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", budget=1 << 20)
    store.put("resp_1", "alice", stored(1))
    assert store.get("resp_1", "alice") == stored(1)
    assert store.get("resp_1", "bob") is None
    assert not store.delete("resp_1", "bob")
    assert store.delete("resp_1", "alice") and store.get("resp_1", "alice") is None


def test_least_recently_used_out_under_the_budget(tmp_path: Path) -> None:
    one = ResponseStore(None, budget=1 << 20)
    one.put("probe", "", stored(0))
    size = one.nbytes
    store = ResponseStore(tmp_path / "r.sqlite3", budget=3 * size)
    for n in range(3):
        assert store.put(f"resp_{n}", "", stored(n)) == 0
    assert store.get("resp_0", "") is not None  # now the most recently used
    assert store.put("resp_3", "", stored(3)) == 1
    assert store.get("resp_1", "") is None and store.get("resp_0", "") is not None
    assert store.nbytes <= 3 * size


def test_records_survive_reopening(tmp_path: Path) -> None:
    ResponseStore(tmp_path / "r.sqlite3", budget=1 << 20).put("resp_1", "k", stored(1))
    assert ResponseStore(tmp_path / "r.sqlite3", budget=1 << 20).get("resp_1", "k") == stored(1)


def test_a_damaged_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = ResponseStore(path, budget=1 << 20)
    assert (tmp_path / "r.corrupt").exists()
    store.put("resp_1", "", stored(1))
    assert store.get("resp_1", "") == stored(1)
