"""The prefix-state cache in-process: the radix index against a brute-force twin, the memory tier (longest hit,
LRU under the byte budget, pins), the disk tier (atomic files, model identity, corrupt files, budget, reload)
and exactness of a restored state against prefilling everything."""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import random
import threading
from pathlib import Path

import pytest
import torch

import tnn.model
from tnn.model.tnn import TnnLM, TnnState
from tnn.server import state_disk
from tnn.server.metrics import Metrics
from tnn.server.prefix_cache import PrefixCache, cache_boundaries, model_identity
from tnn.server.prefix_index import PrefixIndex
from tnn.server.state_disk import StateDisk
from tnn.server.state_io import copy_state, state_from_tensors, state_to_tensors

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> TnnLM:
    torch.set_num_threads(1)
    return tnn.model.load(tiny_model_dir, device="cpu").eval()


def prefill(model: TnnLM, tokens: list[int], state: TnnState | None = None) -> tuple[torch.Tensor, TnnState]:
    with torch.inference_mode():
        return model.prefill(torch.tensor([tokens]), state)


def make_cache(model: TnnLM, entries: float, disk: StateDisk | None = None) -> PrefixCache:
    template = model.empty_state(1)
    return PrefixCache(template=template, device=CPU, budget=int(entries * template.nbytes), metrics=Metrics(),
                       disk=disk)  # fmt: skip


def tokens_of(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(2, 300) for _ in range(length)]


# ---- the index --------------------------------------------------------------------------------------------------


def test_index_matches_a_brute_force_twin_under_random_inserts_and_removes() -> None:
    rng = random.Random(0)
    index: PrefixIndex[int] = PrefixIndex()
    twin: dict[tuple[int, ...], int] = {}
    for step in range(3000):
        key = tuple(rng.randrange(3) for _ in range(rng.randrange(1, 9)))  # 3 symbols: many shared prefixes
        action = rng.random()
        if action < 0.5:
            index.insert(key, step)
            twin[key] = step
        elif action < 0.7:
            assert index.remove(key) == twin.pop(key, None)
        query = tuple(rng.randrange(3) for _ in range(rng.randrange(0, 12)))
        prefixes = [k for k in twin if query[: len(k)] == k]
        expected = max(((len(k), twin[k]) for k in prefixes), default=None)
        assert index.longest(query) == expected
        assert index.get(key) == twin.get(key)
        assert len(index) == len(twin)


def test_cache_boundaries_every_interval_the_extra_ones_and_the_end() -> None:
    assert cache_boundaries(0, 1300, 512) == [512, 1024, 1300]
    assert cache_boundaries(600, 1300, 512, extra=[700, 100, 1300, 5000]) == [700, 1024, 1300]
    assert cache_boundaries(1024, 1024 + 7, 512) == [1031]
    assert cache_boundaries(0, 1024, 512) == [512, 1024]
    assert cache_boundaries(0, 1300, 0, extra=[40]) == [40, 1300]


# ---- state flattening ----------------------------------------------------------------------------------------------


def test_state_round_trips_through_a_flat_dict_and_refuses_another_layout(model: TnnLM) -> None:
    _, state = prefill(model, tokens_of(1, 20))
    flat = state_to_tensors(state)
    assert sorted(flat) == [f"layers.{i}" for i in range(model.config.n_layers)]
    again = state_from_tensors(flat, model.empty_state(1))
    for a, b in zip(state.layers, again.layers, strict=True):
        assert torch.equal(a, b)
    copy = copy_state(state, CPU, model.empty_state(1))
    copy.layers[0].zero_()
    assert state.layers[0].abs().sum() > 0  # a private copy
    bad = {**flat, "layers.0": flat["layers.0"][:, :-1]}
    with pytest.raises(ValueError, match=r"layers\.0"):
        state_from_tensors(bad, model.empty_state(1))
    with pytest.raises(ValueError, match="do not match"):
        state_from_tensors({"layers.0": flat["layers.0"]}, model.empty_state(1))


# ---- memory tier ---------------------------------------------------------------------------------------------------


def test_longest_prefix_hit_leaves_a_token_to_prefill_and_counts_tokens(model: TnnLM) -> None:
    cache = make_cache(model, 10)
    prompt = tokens_of(2, 40)
    for length in (8, 24, 40):
        cache.store(prompt[:length], prefill(model, prompt[:length])[1])
    with cache.lookup(prompt + [5]) as hit:
        assert hit is not None and hit.length == 40
    with cache.lookup(prompt) as hit:  # the whole prompt cached: its last token still runs (its logits)
        assert hit is not None and hit.length == 24
    with cache.lookup(prompt[:7] + [1]) as hit:
        assert hit is None
    with cache.lookup(prompt[:10] + [1, 2, 3]) as hit:
        assert hit is not None and hit.length == 8
    m = cache.metrics
    assert m.prefix_cache_queries._value.get() == 41 + 40 + 8 + 13
    assert m.prefix_cache_hits._value.get() == 40 + 24 + 0 + 8


def test_restored_state_continues_exactly_like_prefilling_everything(model: TnnLM) -> None:
    """Hit == no cache: logits within float32 tolerance, for a state from prefill and one built by steps."""
    cache = make_cache(model, 10)
    prompt = tokens_of(3, 90)
    expected, _ = prefill(model, prompt)
    cache.store(prompt[:50], prefill(model, prompt[:50])[1])
    with cache.lookup(prompt) as hit:
        assert hit is not None and hit.length == 50
        state = cache.copy_out(hit, CPU)
    got, _ = prefill(model, prompt[50:], state)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # float32: chunked FFT sums in another order

    _, state = prefill(model, prompt[:30])  # the decode path: a sequence's state after stepping its answer
    with torch.inference_mode():
        for token in prompt[30:60]:
            _, state = model.step(torch.tensor([token]), state)
    cache.store(prompt[:60], state)
    with cache.lookup(prompt) as hit:
        assert hit is not None and hit.length == 60
        got, _ = prefill(model, prompt[60:], cache.copy_out(hit, CPU))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_lru_eviction_under_the_byte_budget_spares_pinned_and_recent_entries(model: TnnLM) -> None:
    cache = make_cache(model, 3)
    prompts = [tokens_of(10 + i, 12) for i in range(6)]
    state = prefill(model, prompts[0])[1]
    for p in prompts[:3]:
        cache.store(p, state)
    with cache.lookup(prompts[0] + [1]) as hit:  # 0 is now the most recent; 1 the least
        assert hit is not None
    cache.store(prompts[3], state)
    assert not cache.contains(prompts[1]) and cache.contains(prompts[0])
    assert cache.memory_bytes <= cache.budget
    with cache.lookup(prompts[2] + [1]) as hit:  # pinned while "copying": storing more must not evict it
        assert hit is not None
        cache.store(prompts[4], state)
        cache.store(prompts[5], state)
        assert cache.contains(prompts[2])
    assert cache.memory_bytes <= cache.budget  # and the overshoot is evicted once the pin is gone
    assert cache.metrics.prefix_cache_evictions.labels(tier="memory")._value.get() == 3
    assert cache.clear()["memory_entries"] == 3 and not cache.contains(prompts[5])


# ---- disk tier -----------------------------------------------------------------------------------------------------


def test_disk_tier_spills_evictions_and_reloads_them_after_a_restart(model: TnnLM, tmp_path: Path) -> None:
    identity = model_identity(model)
    assert identity == model_identity(model)  # stable: a restart finds its files
    disk = StateDisk(tmp_path, identity=identity, budget=10**9)
    cache = make_cache(model, 2, disk)
    prompts = [tokens_of(20 + i, 30) for i in range(4)]
    states = [prefill(model, p)[1] for p in prompts]
    for p, s in zip(prompts, states, strict=True):
        cache.store(p, s)
    cache.flush()  # evictions are written by the writer thread
    assert len(disk.records) == 2  # the two evicted ones
    cache.close()  # shutdown: the rest too
    assert len(list(tmp_path.glob("*.safetensors"))) == 4 and not list(tmp_path.glob(".*"))

    restarted = make_cache(model, 2, StateDisk(tmp_path, identity=identity, budget=10**9))
    for p, s in zip(prompts, states, strict=True):
        with restarted.lookup(p + [7]) as hit:
            assert hit is not None and hit.length == 30
            for a, b in zip(hit.state.layers, s.layers, strict=True):
                assert torch.equal(a, b)
    assert restarted.metrics.prefix_cache_entries.labels(tier="disk")._value.get() == 4

    other = make_cache(model, 2, StateDisk(tmp_path, identity="another model", budget=10**9))
    with other.lookup(prompts[0] + [7]) as hit:
        assert hit is None  # another model never reads these files


def test_disk_tier_skips_corrupt_files_with_a_warning(
    model: TnnLM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = "m"
    disk = StateDisk(tmp_path, identity=identity, budget=10**9)
    prompts = [tokens_of(30 + i, 16) for i in range(3)]
    for p in prompts:
        disk.write(p, state_to_tensors(prefill(model, p)[1]))
    paths = sorted(disk.records)
    paths[0].write_bytes(b"not a safetensors file")  # garbled header: skipped at scan
    data = bytearray(paths[1].read_bytes())
    data[-20] ^= 0xFF  # one flipped bit in the state: caught by the checksum on read
    paths[1].write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tnn.server.state_disk"):
        cache = make_cache(model, 5, StateDisk(tmp_path, identity=identity, budget=10**9))
        assert any("unreadable" in r.message for r in caplog.records)
        found = {tuple(p): False for p in prompts}
        for p in prompts:
            with cache.lookup(p + [3]) as hit:
                found[tuple(p)] = hit is not None
        assert any("corrupt" in r.message for r in caplog.records)
    assert sum(found.values()) == 1  # only the intact file serves


def test_disk_tier_stays_within_its_budget_oldest_first(model: TnnLM, tmp_path: Path) -> None:
    tensors = state_to_tensors(model.empty_state(1))
    disk = StateDisk(tmp_path, identity="m", budget=10**9)
    record, _ = disk.write([1, 2], tensors)
    assert record is not None
    disk.budget = int(record.nbytes * 2.5)
    disk.write([1, 3], tensors)
    _, deleted = disk.write([1, 4], tensors)
    assert [r.tokens for r in deleted] == [(1, 2)]
    assert disk.nbytes <= disk.budget and len(list(tmp_path.glob("*.safetensors"))) == 2
    disk.budget = 1000
    assert disk.write([9], tensors) == (None, [])  # can never fit: not written, nothing deleted


def flip_token_bit(path: Path, index: int) -> None:
    """Flip the lowest bit of the `index`-th stored token id (safetensors: 8-byte header size, JSON header, data)."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    start = json.loads(data[8 : 8 + size])["__tokens__"]["data_offsets"][0]
    data[8 + size + start + 8 * index] ^= 1
    path.write_bytes(bytes(data))


def test_a_flipped_token_id_never_serves_the_other_prompt(
    model: TnnLM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The token ids are inside the checksum: a file whose ids now spell another prompt is corrupt, not a hit."""
    prompt = tokens_of(50, 20)
    other = prompt[:10] + [prompt[10] ^ 1] + prompt[11:]
    disk = StateDisk(tmp_path, identity="m", budget=10**9)
    record, _ = disk.write(prompt, state_to_tensors(prefill(model, prompt)[1]))
    assert record is not None
    flip_token_bit(record.path, 10)
    cache = make_cache(model, 5, StateDisk(tmp_path, identity="m", budget=10**9))
    assert cache.contains(other)  # the scan reads the flipped ids ...
    with caplog.at_level(logging.WARNING, logger="tnn.server.state_disk"), cache.lookup(other + [3]) as hit:
        assert hit is None  # ... the read refuses them
    assert any("checksum mismatch" in r.message for r in caplog.records)
    assert not cache.contains(other)  # forgotten: the next lookup does not read it again


def test_symlinks_and_fifos_are_skipped_at_start(
    model: TnnLM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = StateDisk(tmp_path, identity="m", budget=10**9)
    prompt = tokens_of(51, 12)
    disk.write(prompt, state_to_tensors(prefill(model, prompt)[1]))
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "gone")
    os.mkfifo(tmp_path / "pipe.safetensors")  # opening it would block for ever
    with caplog.at_level(logging.WARNING, logger="tnn.server.state_disk"):
        cache = make_cache(model, 5, StateDisk(tmp_path, identity="m", budget=10**9))
    skipped = {r.getMessage() for r in caplog.records if "not a regular file" in r.getMessage()}
    assert len(skipped) == 2 and cache.contains(prompt)


def test_a_full_disk_degrades_the_disk_tier_and_leaves_no_temp_file(
    model: TnnLM, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on every write: the evicted states are dropped (counted, warned once), nothing raises, the writes
    run on the writer thread, and shutdown is clean."""
    threads = set()

    def full(fd: int) -> None:
        threads.add(threading.current_thread().name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_disk.os, "fsync", full)
    cache = make_cache(model, 2, StateDisk(tmp_path, identity="m", budget=10**9))
    prompts = [tokens_of(60 + i, 12) for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="tnn.server.prefix_cache"):
        for p in prompts:
            cache.store(p, prefill(model, p)[1])
        cache.flush()
        cache.close()  # shutdown tries the two in memory too: no traceback
    assert threads and all(name.startswith("tnn-state-disk") for name in threads - {"MainThread"})
    assert cache.metrics.prefix_cache_write_errors._value.get() == 5  # 3 evictions + 2 at shutdown
    assert sum("disk-tier write failed" in r.getMessage() for r in caplog.records) == 1
    assert list(tmp_path.iterdir()) == []  # no temp file, no partial file
    assert [cache.contains(p) for p in prompts] == [False, False, False, True, True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("on_device", [False, True])
def test_cuda_model_with_a_host_or_device_cache(model: TnnLM, on_device: bool) -> None:
    gpu_model = copy.deepcopy(model).cuda()
    cuda = gpu_model.device
    template = gpu_model.empty_state(1)
    cache = PrefixCache(template=template, device=cuda if on_device else CPU, budget=10 * template.nbytes,
                        metrics=Metrics())  # fmt: skip
    prompt = tokens_of(40, 70)
    with torch.inference_mode():
        expected, _ = gpu_model.prefill(torch.tensor([prompt], device=cuda))
        _, state = gpu_model.prefill(torch.tensor([prompt[:40]], device=cuda))
    cache.store(prompt[:40], state)
    with cache.lookup(prompt) as hit:
        assert hit is not None and hit.state.layers[0].device.type == ("cuda" if on_device else "cpu")
        restored = cache.copy_out(hit, cuda)
    with torch.inference_mode():
        got, _ = gpu_model.prefill(torch.tensor([prompt[40:]], device=cuda), restored)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
