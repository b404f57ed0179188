"""The kernel's decode run (`PoolStep.run`: several steps with the native sampler between them, no Python in
between) against its twin: the same number of single steps (`PoolStep.__call__`) with
`tnn.model.sampling_native.native_sample` between them, given the same race keys. Both run the same machine code
in the same order, so tokens, finite flags and states agree bit for bit; the tests also pin where a run ends (a
stop id, a row's remaining tokens, a non-finite row, the time budget, an interrupt). Skipped where there is no C++ compiler, no
AVX2 or no native sampler.
"""

from __future__ import annotations

import ctypes
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.model.step_twins import random_pool
from tests.model.test_native_kernel import POOL, small_model
from tnn.model import attach_ssm, native_kernel, native_lib
from tnn.model.native_kernel import PoolStep, RunRows
from tnn.model.native_step import build_native_step, load_native_step, package_path
from tnn.model.sampling_native import native_sample

pytestmark = [
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
    pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in native_kernel.VECTOR_ISAS, reason="no AVX2"),
    pytest.mark.skipif(native_lib.sampler_library() is None, reason="no native sampler"),
]

VOCAB = 101  # small_model's
NEVER = 10.0  # a budget (seconds) no test run reaches


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = package_path(attach_ssm(small_model()), tmp_path_factory.mktemp("kernel"), max_batch=POOL)
    return build_native_step(attach_ssm(small_model()), path, max_batch=POOL)


def bound_pair(library: Path, rows: int) -> tuple[PoolStep, PoolStep, list[torch.Tensor], list[torch.Tensor]]:
    """Two pool steps over identical random pools (the run's and the twin's), and the two pools' layers."""
    model = attach_ssm(small_model())
    native = load_native_step(model, library, max_batch=POOL)
    pool = random_pool(model, rows, scale=0.5)
    twin = pool.clone()
    run_step, twin_step = native.bind(pool), native.bind(twin)
    assert isinstance(run_step, PoolStep) and isinstance(twin_step, PoolStep) and run_step.runs
    return run_step, twin_step, list(pool.layers), list(twin.layers)


def plain_rows(batch: int, **fields: object) -> RunRows:
    values: dict[str, object] = {
        "temperature": [0.8] * batch, "top_k": [0] * batch, "top_p": [0.95] * batch, "min_p": [0.0] * batch,
        "remaining": [1000] * batch, "stop_ids": [[]] * batch,
    }  # fmt: skip
    values.update(fields)
    return RunRows(**values)  # type: ignore[arg-type]


def twin_steps(step: PoolStep, tokens: list[int], rows: RunRows, keys: list[int], steps: int) -> list[list[int]]:
    """`steps` single steps with native_sample between them: the run's definition."""
    batch, sampled = len(tokens), []
    for s in range(steps):
        logits = step(tokens)
        tokens, finite = native_sample(logits, rows.temperature, rows.top_k, rows.top_p, rows.min_p,
                                       keys[s * batch : (s + 1) * batch])  # fmt: skip
        assert all(finite)
        sampled.append(tokens)
    return sampled


def random_keys(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [k % 2**64 for k in torch.empty(count, dtype=torch.int64).random_(generator=generator).tolist()]


@pytest.mark.parametrize("batch", [1, 5, 17])
def test_a_run_is_its_steps_with_the_sampler_between_them(library: Path, batch: int) -> None:
    run_step, twin_step, pool, twin = bound_pair(library, 24)
    tokens = [(7 * b + 3) % VOCAB for b in range(batch)]
    rows = plain_rows(batch, temperature=[0.0 if b % 3 == 2 else 1.0 + 0.2 * (b % 4) for b in range(batch)],
                      top_k=[0 if b % 2 else 20 for b in range(batch)], min_p=[0.05 * (b % 2) for b in range(batch)])  # fmt: skip
    keys = random_keys(6 * batch, seed=batch)
    sampled, finite = run_step.run(tokens, rows, keys, max_steps=6, budget_seconds=NEVER)
    assert len(sampled) == 6 and all(all(flags) for flags in finite)
    assert sampled == twin_steps(twin_step, tokens, rows, keys, 6)
    assert all(torch.equal(a, b) for a, b in zip(pool, twin, strict=True))  # rows past the batch untouched too
    assert len({token for step in sampled for token in step}) > 1  # not one token fed forward throughout


def test_a_run_ends_after_the_step_a_row_samples_a_stop_id_or_runs_out(library: Path) -> None:
    run_step, twin_step, pool, twin = bound_pair(library, 4)
    reference = bound_pair(library, 4)[0]  # a third pool, equal to the other two
    tokens, keys = [1, 2, 3], random_keys(3 * 8, seed=1)
    free = plain_rows(3)
    expected = twin_steps(reference, tokens, free, keys, 8)  # what an unbounded run samples
    # row 1 stops at the first step that samples the id it samples at step 4 (or earlier, if it sampled it before)
    stop = expected[4][1]
    first = next(s for s in range(8) if expected[s][1] == stop)
    sampled, _ = run_step.run(tokens, plain_rows(3, stop_ids=[[], [stop], []]), keys, max_steps=8, budget_seconds=NEVER)
    assert len(sampled) == first + 1 and sampled == expected[: first + 1]
    # the state consumed the tokens before the last sampled one, as first + 1 single steps leave it
    assert twin_steps(twin_step, tokens, free, keys, first + 1) == expected[: first + 1]
    assert all(torch.equal(a, b) for a, b in zip(pool, twin, strict=True))
    sampled, _ = reference.run(tokens, plain_rows(3, remaining=[5, 2, 9]), keys, max_steps=8, budget_seconds=NEVER)
    assert len(sampled) == 2  # row 1 may generate 2 more tokens


def test_a_run_ends_at_a_non_finite_row_and_reports_it(library: Path) -> None:
    model = attach_ssm(small_model())
    native = load_native_step(model, library, max_batch=POOL)
    pool = random_pool(model, 3, scale=0.5)
    pool.layers[0][1].fill_(math.inf)  # row 1's state: its logits are not finite
    step = native.bind(pool)
    assert isinstance(step, PoolStep)
    sampled, finite = step.run([4, 5, 6], plain_rows(3), random_keys(12, seed=2), max_steps=4, budget_seconds=NEVER)
    assert len(sampled) == 1 and finite == [[True, False, True]]


def test_a_run_stops_before_a_step_that_would_pass_its_budget_or_when_interrupted(library: Path) -> None:
    run_step, _, _, _ = bound_pair(library, 4)
    raised = ctypes.c_int32(1)  # another thread's request: set before the run here, so it ends after one step
    sampled, _ = run_step.run([1, 2], plain_rows(2), random_keys(2 * 50, seed=3), max_steps=50, budget_seconds=NEVER,
                              interrupt=raised)  # fmt: skip
    assert len(sampled) == 1
    sampled, _ = run_step.run([1, 2], plain_rows(2), random_keys(2 * 50, seed=3), max_steps=50, budget_seconds=0.0)
    assert len(sampled) == 1  # the first step always runs
    sampled, _ = run_step.run([1, 2], plain_rows(2), random_keys(2 * 50, seed=3), max_steps=50, budget_seconds=NEVER)
    assert len(sampled) == 50


def test_bad_runs_are_refused(library: Path) -> None:
    run_step, _, _, _ = bound_pair(library, 4)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 101\)"):
        run_step.run([1, 101], plain_rows(2), random_keys(4, seed=4), max_steps=2, budget_seconds=NEVER)
    with pytest.raises(ValueError, match="needs 4 keys"):
        run_step.run([1, 2], plain_rows(2), random_keys(3, seed=4), max_steps=2, budget_seconds=NEVER)
    with pytest.raises(ValueError, match="5 rows on a pool of 4 slots"):
        run_step.run([1] * 5, plain_rows(5), random_keys(10, seed=4), max_steps=2, budget_seconds=NEVER)
