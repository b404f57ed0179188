"""The engine in-process (no HTTP): chunked prefill, equal-length prefill batching and hole filling in the
running batch give exactly the tokens a request gets alone."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
import torch

from tnn.model import native_kernel
from tnn.model.sampling import SamplingParams
from tnn.server.app import build_engine
from tnn.server.engine import Engine
from tnn.server.generation import ChoiceDelta, GenerationRequest
from tnn.server.metrics import Metrics
from tnn.server.settings import Settings

pytestmark = pytest.mark.timeout(120)


def make_engine(model_dir: Path, **settings: object) -> Engine:
    return build_engine(Settings(model_dir=model_dir, threads=1, **settings), Metrics())  # type: ignore[arg-type]


def request(prompt: list[int], max_tokens: int, seed: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r{seed}", prompts=[prompt], sampling=SamplingParams(temperature=1.0, seed=seed),
        max_tokens=max_tokens, ignore_eos=True, arrival=time.monotonic(),
    )  # fmt: skip


async def generate(engine: Engine, req: GenerationRequest, delay: float = 0.0) -> list[int]:
    await asyncio.sleep(delay)
    handle = engine.submit(req)
    tokens: list[int] = []
    while not handle.done:
        event = await handle.next_event(30)
        assert isinstance(event, ChoiceDelta), event
        tokens += event.tokens
    return tokens


def run(engine: Engine, requests: list[GenerationRequest], delays: list[float] | None = None) -> list[list[int]]:
    async def main() -> list[list[int]]:
        engine.start(asyncio.get_running_loop())
        try:
            return await asyncio.gather(
                *(generate(engine, r, d) for r, d in zip(requests, delays or [0.0] * len(requests), strict=True))
            )
        finally:
            await asyncio.to_thread(engine.stop)

    return asyncio.run(main())


def prompts(count: int, length: int) -> list[list[int]]:
    return [[0] + [(7 * i + 3 * j) % 300 + 2 for j in range(length - 1)] for i in range(count)]


def test_chunked_prefill_and_prefill_batching_match_a_lone_request(tiny_model_dir: Path) -> None:
    requests = [request(p, 12, seed=i) for i, p in enumerate(prompts(6, 50))]  # equal lengths: batched prefill
    alone = [run(make_engine(tiny_model_dir), [r])[0] for r in requests]
    chunked = run(make_engine(tiny_model_dir, max_prefill_tokens=16), requests)  # 50 tokens in 4 iterations each
    together = run(make_engine(tiny_model_dir), requests)
    assert chunked == alone
    assert together == alone


def test_sequences_joining_and_leaving_the_batch_keep_their_tokens(tiny_model_dir: Path) -> None:
    """Staggered arrivals and different lengths: finished rows leave holes that later arrivals fill."""
    requests = [request(prompts(i + 1, 9 + i % 3)[i], 5 + 7 * (i % 4), seed=100 + i) for i in range(12)]
    alone = [run(make_engine(tiny_model_dir), [r])[0] for r in requests]
    delays = [0.0] * 4 + [0.02] * 4 + [0.05] * 4
    staggered = run(make_engine(tiny_model_dir, max_num_seqs=6), requests, delays)
    assert staggered == alone
    assert [len(t) for t in staggered] == [r.max_tokens for r in requests]


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in native_kernel.VECTOR_ISAS, reason="no AVX2")
def test_the_native_kernel_prefills_and_steps_batch_invariantly(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With the kernel installed (`--native-step wait`) prompts are prefilled in it (engine._prefill_tokens) and
    stepped by the pool-bound step: each row's sums do not depend on the others, so batched, chunked and lone
    requests draw the same seeded tokens."""

    def native_engine(**settings: object) -> Engine:
        engine = make_engine(tiny_model_dir, native_step="wait", compile_cache_dir=tmp_path, **settings)
        engine.warmup()
        assert engine.decode_step is not None and engine.decode_step.pool_step is not None
        return engine

    engine = native_engine()
    prefills = []
    prefill_tokens = engine._prefill_tokens
    engine._prefill_tokens = lambda tokens, state: prefills.append(tokens.shape) or prefill_tokens(tokens, state)  # type: ignore[method-assign]
    requests = [request(p, 12, seed=i) for i, p in enumerate(prompts(6, 50))]
    together = run(engine, requests)
    assert prefills == [(6, 50)]  # equal lengths: one prefill of the six
    alone = [run(native_engine(), [r])[0] for r in requests]
    chunked = run(native_engine(max_prefill_tokens=16), requests)
    assert together == alone
    assert chunked == alone
    eager = run(make_engine(tiny_model_dir), requests[:1])[0]
    assert eager[:4] == alone[0][:4]  # the eager twin: float32 round-off may move a later draw, not the first ones
