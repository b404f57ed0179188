"""Fault injection into the in-process engine under concurrent load: a fault in one request's hook fails that
request alone (every other output equals the fault-free run, seeded sampling), a fault in cache work fails
nobody, and the slots and gauges return to 0 (docs/fault-isolation.md)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tnn.model.sampling import SamplingParams
from tnn.server.app import build_engine
from tnn.server.engine import Engine
from tnn.server.generation import ChoiceDelta, GenerationRequest, RequestError
from tnn.server.metrics import Metrics
from tnn.server.prefix_cache import PrefixCache
from tnn.server.settings import Settings

pytestmark = pytest.mark.timeout(180)

Outcome = dict[int, list[int]] | str  # tokens per choice, or the error code

# engine method -> (the tnn_engine_faults hook label it counts under, calls per request at most (a fault fires at a
# random one of them), the requests a call works for)
Hook = tuple[str, int, Callable[..., list[str]]]
REQUEST_HOOKS: dict[str, Hook] = {
    "_admit_request": ("admit", 1, lambda tracker, *_: [tracker.request.request_id]),
    "_restore": ("admit", 1, lambda unit, **_: [] if unit.tracker is None else [unit.tracker.request.request_id]),
    # a prompt takes one or two prefill calls, by how the per-iteration budget was shared when it arrived (timing):
    # its fault fires at the first, the one every prompt makes
    "_prefill_group": ("prefill", 1, lambda units, _: [u.tracker.request.request_id for u in units if u.tracker]),
    "_start_decoding": ("first_token", 1, lambda unit, _logits: [unit.tracker.request.request_id]),
    "_sample": ("sample", 5, lambda sequences, _logits: [s.tracker.request.request_id for s in sequences]),
    "_advance_grammar": ("token", 5, lambda seq, _token: [seq.tracker.request.request_id]),
    "_accept_token": ("token", 5, lambda seq, *_: [seq.tracker.request.request_id]),
}
CACHE_HOOKS: dict[str, Hook] = {
    "_store_finished": ("store_finished", 1, lambda seq: [seq.tracker.request.request_id]),
}


def make_engine(model_dir: Path) -> Engine:
    settings = Settings(model_dir=model_dir, threads=1, max_num_seqs=6, max_prefill_tokens=16, state_cache_interval=8)
    return build_engine(settings, Metrics())


def requests() -> list[GenerationRequest]:
    """Ten requests, two with n=2; prompts share prefixes (cache hits), lengths 9..41 (chunked prefill)."""
    shared = [0] + [(5 * j) % 200 + 2 for j in range(16)]
    out = []
    for i in range(10):
        prompt = (shared[: 4 + 3 * i] + [(7 * i + 3 * j) % 300 + 2 for j in range(5 + 2 * i)])[: 9 + 3 * i]
        out.append(GenerationRequest(
            request_id=f"r{i}", prompts=[prompt], sampling=SamplingParams(temperature=1.0, seed=40 + i),
            max_tokens=6 + i % 5, ignore_eos=True, arrival=time.monotonic(), n=2 if i in (3, 7) else 1,
        ))  # fmt: skip
    return out


async def outcome(engine: Engine, request: GenerationRequest, delay: float) -> Outcome:
    await asyncio.sleep(delay)
    handle = engine.submit(request)
    tokens: dict[int, list[int]] = {}
    while not handle.done:
        event = await handle.next_event(30)
        if isinstance(event, RequestError):
            return event.code
        if isinstance(event, ChoiceDelta):
            tokens.setdefault(event.index, []).extend(event.tokens)
    return tokens


def run(engine: Engine) -> dict[str, Outcome]:
    batch = requests()

    async def main() -> list[Outcome]:
        engine.start(asyncio.get_running_loop())
        try:
            return await asyncio.gather(*(outcome(engine, r, 0.01 * (i % 4)) for i, r in enumerate(batch)))
        finally:
            await asyncio.to_thread(engine.stop)

    return {r.request_id: o for r, o in zip(batch, asyncio.run(main()), strict=True)}


def inject(monkeypatch: pytest.MonkeyPatch, name: str, owners: Callable[..., list[str]], chosen: dict[str, int]):
    """Make Engine.`name` raise from the chosen[rid]-th call that works for request rid on (a sticky fault:
    a retry of that request's work fails again). Returns the set of requests a fault reached."""
    original = getattr(Engine, name)
    calls: dict[str, int] = {}
    fired: set[str] = set()

    def faulty(self: Engine, *args: Any, **kwargs: Any) -> Any:
        for rid in owners(*args, **kwargs):
            if rid in chosen:
                calls[rid] = calls.get(rid, 0) + 1
                if calls[rid] >= chosen[rid]:
                    fired.add(rid)
                    raise RuntimeError(f"injected fault in {name} for {rid}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, name, faulty)
    return fired


def gauge(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, {"model_name": "tnn", **labels})
    assert value is not None, name
    return value


def assert_idle(engine: Engine) -> None:
    assert engine.slots.used == 0
    assert engine.outstanding == 0
    assert not engine._batch.rows
    for name in ("tnn_state_slots_used", "tnn_num_requests_running", "tnn_num_requests_waiting", "tnn_state_bytes"):
        assert gauge(engine, name) == 0, name


@pytest.fixture(scope="module")
def fault_free(tiny_model_dir: Path) -> dict[str, Outcome]:
    engine = make_engine(tiny_model_dir)
    result = run(engine)
    assert all(isinstance(o, dict) for o in result.values()), result
    assert_idle(engine)
    return result


@pytest.mark.parametrize("hook", [*REQUEST_HOOKS, *CACHE_HOOKS])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_fault_fails_only_its_request(
    hook: str, seed: int, tiny_model_dir: Path, fault_free: dict[str, Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    label, calls, owners = {**REQUEST_HOOKS, **CACHE_HOOKS}[hook]
    rng = random.Random(f"{hook}-{seed}")
    chosen = {rid: rng.randint(1, calls) for rid in rng.sample(sorted(fault_free), 3)}
    engine = make_engine(tiny_model_dir)
    fired = inject(monkeypatch, hook, owners, chosen)
    result = run(engine)
    assert fired == set(chosen), f"not every injected fault in {hook} was reached"
    failing = hook in REQUEST_HOOKS
    for rid, expected in fault_free.items():
        if rid in fired and failing:
            assert result[rid] == "internal_error", (rid, result[rid])
        else:
            assert result[rid] == expected, rid
    assert gauge(engine, "tnn_engine_faults_total", hook=label) >= (len(fired) if failing else 1)
    assert_idle(engine)


def test_cache_store_faults_fail_nobody(
    tiny_model_dir: Path, fault_free: dict[str, Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared machinery: every other store into the prefix cache raises; every request still gets its output."""
    original = PrefixCache.store
    calls = [0]

    def flaky(self: PrefixCache, tokens: Any, state: Any) -> None:
        calls[0] += 1
        if calls[0] % 2:
            raise OSError(28, "No space left on device")
        original(self, tokens, state)

    monkeypatch.setattr(PrefixCache, "store", flaky)
    engine = make_engine(tiny_model_dir)
    assert run(engine) == fault_free
    assert gauge(engine, "tnn_engine_faults_total", hook="cache_store") == (calls[0] + 1) // 2 > 0
    assert_idle(engine)
