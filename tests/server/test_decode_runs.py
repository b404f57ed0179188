"""Decode runs in the engine (tnn.server.decode_runs): with the native kernel installed, a batch whose rows all
sample plainly decodes several steps per native call. Seeded and greedy rows give the same tokens, finish reasons
and counts as one step per call (`--decode-run-ms 0`), whether a run ends at a stop id, at max_tokens or at its
budget; rows that need Python between steps (stop strings, logprobs, penalties) never run; a prompt that continues
a run's answer finds its state in the prefix cache as after single steps."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from pathlib import Path

import pytest
import torch

from tnn.model import native_kernel, native_lib
from tnn.model.sampling import SamplingParams
from tnn.server.app import build_engine
from tnn.server.engine import Engine
from tnn.server.generation import CachedPrompt, ChoiceDelta, GenerationRequest
from tnn.server.metrics import Metrics
from tnn.server.settings import Settings

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
    pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in native_kernel.VECTOR_ISAS, reason="no AVX2"),
    pytest.mark.skipif(native_lib.sampler_library() is None, reason="no native sampler"),
]

LONG_RUNS = 1000.0  # ms: with 64 steps a run, runs end at a finishing row, never at the budget


@dataclasses.dataclass
class Answer:
    tokens: list[int]
    finish_reason: str | None
    chunks: int  # deltas the engine sent for it
    cached: int = 0  # prompt tokens restored from the prefix cache


def native_engine(model_dir: Path, cache: Path, run_ms: float, min_rows: int = 1) -> tuple[Engine, list[int]]:
    """An engine with the kernel installed, and the list its decode runs append their step counts to."""
    engine = build_engine(Settings(model_dir=model_dir, threads=1, native_step="wait", compile_cache_dir=cache,
                                   decode_run_ms=run_ms, decode_run_steps=64, decode_run_min_rows=min_rows),
                          Metrics())  # type: ignore[arg-type]  # fmt: skip
    engine.warmup()
    assert engine.decode_step is not None and engine.decode_step.pool_step is not None
    steps: list[int] = []
    pool_step = engine.decode_step.pool_step
    run = pool_step.run  # type: ignore[union-attr]

    def counted(*args: object, **kwargs: object) -> object:
        result = run(*args, **kwargs)  # type: ignore[arg-type]
        steps.append(len(result[0]))
        return result

    pool_step.run = counted  # type: ignore[method-assign,union-attr]
    return engine, steps


def seeded(prompt: list[int], max_tokens: int, index: int, **fields: object) -> GenerationRequest:
    """A request drawn with seed `index` (every third one greedy): the same tokens in any batch."""
    sampling = SamplingParams(temperature=0.0) if index % 3 == 2 else SamplingParams(temperature=1.0, seed=index)
    return GenerationRequest(request_id=f"r{index}", prompts=[prompt], sampling=sampling, max_tokens=max_tokens,
                             ignore_eos=True, arrival=time.monotonic(), **fields)  # type: ignore[arg-type]  # fmt: skip


def answer_all(engine: Engine, requests: list[GenerationRequest], *, in_turn: bool = False) -> list[Answer]:
    """The answers to `requests`, sent at once (in_turn: each after the previous one's answer)."""

    async def one(request: GenerationRequest) -> Answer:
        handle = engine.submit(request)
        answer = Answer([], None, 0)
        while not handle.done:
            event = await handle.next_event(30)
            if isinstance(event, CachedPrompt):
                answer.cached += event.tokens
                continue
            assert isinstance(event, ChoiceDelta), event
            answer.tokens += event.tokens
            answer.finish_reason = event.finish_reason or answer.finish_reason
            answer.chunks += 1
        return answer

    async def main() -> list[Answer]:
        engine.start(asyncio.get_running_loop())
        try:
            if in_turn:
                return [await one(r) for r in requests]
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await asyncio.to_thread(engine.stop)

    return asyncio.run(main())


def prompts(count: int) -> list[list[int]]:
    return [[0] + [(11 * i + 5 * j) % 250 + 2 for j in range(6 + i % 3)] for i in range(count)]


def metric(engine: Engine, name: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, {"model_name": engine.metrics.model_name})
    assert value is not None, name
    return value


def test_runs_give_the_tokens_and_counts_of_single_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Six rows of different lengths: each run ends where a row reaches max_tokens."""
    requests = [seeded(p, 5 + 9 * i, i) for i, p in enumerate(prompts(6))]
    single, single_steps = native_engine(tiny_model_dir, tmp_path, 0.0)
    stepped = answer_all(single, requests)
    engine, steps = native_engine(tiny_model_dir, tmp_path, LONG_RUNS)
    ran = answer_all(engine, requests)
    assert single_steps == [] and max(steps) > 1  # the first engine never ran; this one did, several steps a run
    assert [a.tokens for a in ran] == [a.tokens for a in stepped]
    assert [len(a.tokens) for a in ran] == [r.max_tokens for r in requests]
    assert all(a.finish_reason == "length" for a in ran)
    assert sum(a.chunks for a in ran) < sum(a.chunks for a in stepped)  # a run's tokens go out together
    generated = sum(len(a.tokens) for a in ran)
    for twin in (engine, single):
        assert metric(twin, "tnn_generation_tokens_total") == generated
        assert metric(twin, "tnn_inter_token_latency_seconds_count") == generated - len(requests)
    decode_steps = metric(engine, "tnn_decode_step_seconds_count")
    assert decode_steps == metric(single, "tnn_decode_step_seconds_count") == sum(steps)


def test_a_run_ends_at_a_stop_id_and_at_its_budget(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = [seeded(p, 40, i) for i, p in enumerate(prompts(3))]
    free = answer_all(native_engine(tiny_model_dir, tmp_path, 0.0)[0], base)
    tokens = free[1].tokens  # row 1 is to stop at the first id it samples for the first time after 3 others
    first = next(i for i, t in enumerate(tokens) if i >= 3 and tokens.index(t) == i)
    stop = tokens[first]
    requests = [dataclasses.replace(r, stop_token_ids=frozenset({stop}) if i == 1 else frozenset())
                for i, r in enumerate(base)]  # fmt: skip
    single = answer_all(native_engine(tiny_model_dir, tmp_path, 0.0)[0], requests)
    engine, steps = native_engine(tiny_model_dir, tmp_path, LONG_RUNS)
    ran = answer_all(engine, requests)
    assert [a.tokens for a in ran] == [a.tokens for a in single]
    assert ran[1].tokens == free[1].tokens[: first + 1] and ran[1].finish_reason == "stop"
    assert steps[0] == first  # the first run (after the prefill's token) ended at row 1's stop
    short, short_steps = native_engine(tiny_model_dir, tmp_path, 1e-6)  # every run ends after its first step
    assert [a.tokens for a in answer_all(short, requests)] == [a.tokens for a in single]
    assert set(short_steps) == {1}


@pytest.mark.parametrize(
    "fields",
    [{"stop": ("zz",)}, {"logprobs": 2}, {"sampling": SamplingParams(temperature=1.0, seed=3, presence_penalty=1)}],
    ids=["stop-strings", "logprobs", "penalty"],
)
def test_rows_that_need_python_between_steps_never_run(
    tiny_model_dir: Path, tmp_path: Path, fields: dict[str, object]
) -> None:
    requests = [seeded(p, 12, i) for i, p in enumerate(prompts(3))]
    requests[2] = dataclasses.replace(requests[2], **fields)  # type: ignore[arg-type]
    single = answer_all(native_engine(tiny_model_dir, tmp_path, 0.0)[0], requests)
    engine, steps = native_engine(tiny_model_dir, tmp_path, LONG_RUNS)
    ran = answer_all(engine, requests)
    assert steps == []
    assert [a.tokens for a in ran] == [a.tokens for a in single]


def test_runs_start_from_the_minimum_number_of_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    requests = [seeded(p, 12, i) for i, p in enumerate(prompts(4))]
    engine, steps = native_engine(tiny_model_dir, tmp_path, LONG_RUNS, min_rows=4)
    answer_all(engine, requests[:3])
    assert steps == []
    engine, steps = native_engine(tiny_model_dir, tmp_path, LONG_RUNS, min_rows=4)
    answer_all(engine, requests)
    assert steps != []


def test_an_answer_continued_from_a_run_resumes_the_state_single_steps_leave(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A finished row's state goes into the prefix cache (prompt + its tokens but the last): a prompt continuing
    the answer restores it, and greedy decoding from it matches a server that stepped one token per call."""
    prompt = prompts(1)[0]
    answers = []
    for run_ms in (0.0, LONG_RUNS):
        engine, _ = native_engine(tiny_model_dir, tmp_path, run_ms)
        first = answer_all(engine, [seeded(prompt, 20, 0)])[0]
        follow = seeded(prompt + first.tokens + [7], 15, 1)
        fresh, _ = native_engine(tiny_model_dir, tmp_path, run_ms)  # nothing cached
        from_prompt = answer_all(fresh, [follow])[0]
        cached, _ = native_engine(tiny_model_dir, tmp_path, run_ms)
        again, from_cache = answer_all(cached, [seeded(prompt, 20, 0), follow], in_turn=True)
        assert again.tokens == first.tokens
        assert from_cache.cached == len(prompt) + len(first.tokens) - 1  # all but the answer's last token
        answers.append((first.tokens, from_cache.tokens, from_prompt.tokens))
    assert answers[0] == answers[1]
    assert answers[1][1] == answers[1][2]  # from the cached state as from the prompt
