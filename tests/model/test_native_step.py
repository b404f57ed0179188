"""The compiled decode step (AOTInductor) against its reference twin, the eager `TnnLM.step`.

Both run the same maths in the same dtype; the compiled one fuses the element-wise ops and reorders some sums, so
float64 agrees to round-off (1e-12 relative) and float32 to 1e-5 relative, over several steps, at batch sizes the
package was not traced with, on rows of a larger pool. Compiling takes tens of seconds per package: one float32 and
one float64 package per session (module-scoped fixtures), skipped where no C++ toolchain can build them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.model.step_twins import assert_steps_like_eager, random_pool
from tnn.model import TnnConfig, TnnLM, attach_ssm
from tnn.model.native_step import (
    NativeStep,
    build_native_step,
    check_against_eager,
    load_native_step,
    package_key,
    package_path,
    state_layout,
)

MAX_BATCH = 8
STEPS = 5
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def small_model(dtype: torch.dtype, seed: int = 0) -> TnnLM:
    """Two layers, reduced conversion (modes plus a FIR head, so every term of the step is exercised)."""
    torch.manual_seed(seed)
    config = TnnConfig(vocab_size=101, d_model=24, n_layers=2, d_glu=24, d_rpe=8, train_length=64, dropout=0.0)
    return attach_ssm(TnnLM(config).to(dtype).eval())


def compiled(model: TnnLM, directory: Path) -> NativeStep:
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: AOTInductor cannot build the step here")
    package = package_path(model, directory, max_batch=MAX_BATCH, backend="aoti")
    build_native_step(model, package, max_batch=MAX_BATCH)
    return load_native_step(model, package, max_batch=MAX_BATCH)


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def model_and_step(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = small_model(request.param)
    return model, compiled(model, tmp_path_factory.mktemp("native-step"))


@pytest.mark.parametrize("batch", [1, 3, MAX_BATCH])
def test_compiled_step_equals_the_eager_step(model_and_step, batch: int) -> None:
    model, native = model_and_step
    assert_steps_like_eager(model, native, random_pool(model, MAX_BATCH + 2), batch, STEPS, TOLERANCE[model.dtype])


def test_compiled_step_refuses_batches_it_was_not_built_for(model_and_step) -> None:
    model, native = model_and_step
    pool = model.empty_state(MAX_BATCH + 1)
    with pytest.raises(ValueError, match=f"1..{MAX_BATCH} rows"):
        native(torch.zeros(MAX_BATCH + 1, dtype=torch.long), pool)


def test_a_package_of_other_weights_is_refused(model_and_step) -> None:
    """Same layout, other weights: the check against the eager step refuses it."""
    model, native = model_and_step
    other = small_model(model.dtype)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.01)
    assert package_key(other, MAX_BATCH) != package_key(model, MAX_BATCH)
    with pytest.raises(ValueError, match="stale or foreign package"):
        check_against_eager(other, native)
    with pytest.raises(ValueError, match=native.package.name):
        load_native_step(other, native.package, max_batch=MAX_BATCH)


def test_a_package_of_another_state_layout_is_refused_before_it_runs(model_and_step) -> None:
    """Its generated code would abort the process on other shapes: refused by the layout in its metadata."""
    model, native = model_and_step
    other = small_model(model.dtype, seed=1)  # another fit: other mode counts per layer
    assert state_layout(other) != state_layout(model)
    with pytest.raises(ValueError, match="compiled for state layout"):
        load_native_step(other, native.package, max_batch=MAX_BATCH)
    with pytest.raises(ValueError, match="the compiled step takes"):
        native(torch.zeros(2, dtype=torch.long), other.empty_state(2))


def test_package_key_follows_the_weights_and_the_dtype() -> None:
    model = small_model(torch.float32)
    key = package_key(model, MAX_BATCH)
    assert package_key(small_model(torch.float32), MAX_BATCH) == key  # same seed: same weights
    assert package_key(small_model(torch.float64), MAX_BATCH) != key
    assert package_key(model, MAX_BATCH * 2) != key
    with torch.no_grad():
        model.layers[0].glu.l1.weight[0, 0] += 1e-3
    assert package_key(model, MAX_BATCH) != key
