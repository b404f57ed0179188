"""The hand-written decode kernel (tnn.model.native_kernel) against its reference twin, the eager `TnnLM.step`.

Same maths in float32; the kernel sums in another order (register-blocked dot products, FMA) and its exp is a
polynomial (about 2 ulp), so logits and states agree to 1e-5 relative (measured: about 1e-6) over several steps
from a random state, on rows [0, B) of a larger pool, at batch sizes that exercise every micro-kernel shape (1, 3,
5, 8 = 6 + 2, 17 = 6 + 6 + 5, 64 = 10 x 6 + 4). The small models have a vocabulary and widths that are not multiples of the 16-output
panels. One library build (seconds) per session; skipped where there is no C++ compiler or no AVX2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.model.step_twins import assert_steps_like_eager, random_pool
from tnn.model import TnnConfig, TnnLM, attach_ssm, default_model_dir, load, native_kernel, native_lib
from tnn.model.native_step import (
    NativeStep,
    build_native_step,
    check_against_eager,
    load_native_step,
    package_path,
    preferred_backend,
)
from tnn.model.tnn import TnnState

TOLERANCE = 1e-5
STEPS = 5
POOL = 70
pytestmark = [
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
    pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in native_kernel.VECTOR_ISAS, reason="no AVX2"),
]

VARIANTS = {
    "reduced": ({}, {}),  # modes plus a FIR head, biases, final LayerNorm, scaled embedding: the shipped shape
    "plain": ({"bias": False, "final_norm": False, "scale_embedding": False, "padding_idx": None}, {}),
    "etsc": ({}, {"method": "etsc"}),  # modes only, no FIR head
}


def small_model(seed: int = 0, dtype: torch.dtype = torch.float32, **fields: object) -> TnnLM:
    torch.manual_seed(seed)
    config = TnnConfig(
        vocab_size=101, d_model=24, n_layers=2, d_glu=20, d_rpe=8, train_length=64, dropout=0.0, **fields
    )
    return TnnLM(config).to(dtype).eval()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = package_path(attach_ssm(small_model()), tmp_path_factory.mktemp("kernel"), max_batch=POOL)
    assert path.suffix == ".so"
    return build_native_step(attach_ssm(small_model()), path, max_batch=POOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch", [1, 3, 5, 8, 17, 64])
def test_kernel_step_equals_the_eager_step(library: Path, variant: str, batch: int) -> None:
    fields, conversion = VARIANTS[variant]
    model = attach_ssm(small_model(**fields), **conversion)
    native = load_native_step(model, library, max_batch=POOL)
    assert native.backend == "kernel"
    assert_steps_like_eager(model, native, random_pool(model, POOL, scale=0.5), batch, STEPS, TOLERANCE)


@pytest.mark.parametrize(
    ("fields", "dtype", "reason"),
    [
        ({}, torch.float64, "the kernel is float32"),
        ({"norm_position": "post"}, torch.float32, "post-norm"),
        ({"gtu_act": "gelu"}, torch.float32, "activations gelu/silu"),
        ({"gtu_norm": True}, torch.float32, "a GTU norm"),
    ],
)
def test_configs_the_kernel_does_not_cover_are_refused(
    library: Path, fields: dict[str, object], dtype: torch.dtype, reason: str
) -> None:
    """Refused with the reason, before any step: the AOTInductor backend (or the eager step) serves them."""
    model = attach_ssm(small_model(dtype=dtype, **fields))
    assert reason in (native_kernel.unsupported_reason(model) or "")
    assert preferred_backend(model) == "aoti"
    assert package_path(model, library.parent, max_batch=8).suffix == ".pt2"
    with pytest.raises(ValueError, match=reason):
        load_native_step(model, library, max_batch=8)
    with pytest.raises(ValueError, match=reason):
        build_native_step(model, library.parent / "other.so", max_batch=8)


def test_an_unconverted_model_is_refused(library: Path) -> None:
    assert "not converted" in (native_kernel.unsupported_reason(small_model()) or "")


def test_weights_are_packed_from_the_model_it_is_loaded_for(library: Path) -> None:
    """The library holds no weights (one build serves every model: its key ignores them); a step packed from other
    weights is caught by the check against the eager step."""
    model = attach_ssm(small_model())
    other = attach_ssm(small_model())
    with torch.no_grad():
        other.layers[1].glu.l3.weight.mul_(1.1)
    assert package_path(other, library.parent, max_batch=8) == library
    check_against_eager(other, load_native_step(other, library, max_batch=8))
    stale = load_native_step(model, library, max_batch=8)
    with pytest.raises(ValueError, match="stale or foreign"):
        check_against_eager(other, stale)


def test_library_key_follows_the_source_and_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = native_kernel.library_key()
    assert native_kernel.library_key() == key
    edited = tmp_path / "native_kernel.cpp"
    edited.write_text(native_kernel.SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(native_kernel, "SOURCE", edited)
    assert native_kernel.library_key() != key
    monkeypatch.setattr(native_kernel, "SOURCE", Path(native_kernel.__file__).with_name("native_kernel.cpp"))
    monkeypatch.setattr(native_kernel, "FLAGS", (*native_kernel.FLAGS, "-DOTHER"))
    assert native_kernel.library_key() != key


def test_bad_tokens_and_states_are_refused(library: Path) -> None:
    model = attach_ssm(small_model())
    native = load_native_step(model, library, max_batch=8)
    pool = model.empty_state(4)
    before = pool.clone()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 101\)"):
        native(torch.tensor([0, 101]), pool.rows(0, 2))
    assert all(torch.equal(a, b) for a, b in zip(pool.layers, before.layers, strict=True))  # nothing written
    strided = TnnState(tuple(layer[::2] for layer in pool.layers))
    with pytest.raises(ValueError, match="contiguous float32 states"):
        native(torch.tensor([0, 1]), strided)
    with pytest.raises(ValueError, match="1..8 rows"):
        native(torch.zeros(9, dtype=torch.long), model.empty_state(9))


def test_a_damaged_library_is_refused(library: Path, tmp_path: Path) -> None:
    damaged = tmp_path / library.name
    damaged.write_bytes(library.read_bytes()[:1000])
    (tmp_path / f"{library.name}.sha256").write_text((library.parent / f"{library.name}.sha256").read_text())
    with pytest.raises(ValueError, match="damaged"):
        load_native_step(attach_ssm(small_model()), damaged, max_batch=8)


def test_native_step_is_the_kernel_for_the_shipped_config(library: Path) -> None:
    native = load_native_step(attach_ssm(small_model()), library, max_batch=8)
    assert isinstance(native, NativeStep)
    assert (native.name, native.preferred_max_rows) == ("native kernel", 8)


def test_without_a_compiler_the_build_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The path is still named (the server asks for it first); building raises, so the eager step serves."""
    monkeypatch.setattr(native_lib, "compiler", lambda cxx: (None, "no compiler"))
    path = native_kernel.library_path(tmp_path)
    with pytest.raises(RuntimeError, match="no C"):
        build_native_step(attach_ssm(small_model()), path, max_batch=8)
    assert not path.exists()


def test_the_shipped_model_steps_as_its_eager_twin(library: Path) -> None:
    """The shipped shapes (d 192, 576 channels, vocabulary 4,096: whole panels, K up to 576), batch 1 and 4."""
    model = load(default_model_dir())
    native = load_native_step(model, library, max_batch=8)
    for batch in (1, 4):
        assert check_against_eager(model, native, tolerance=TOLERANCE, batch=batch) <= TOLERANCE


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("batch", "length", "pass_tokens"), [(1, 1, 64), (1, 27, 64), (3, 70, 64), (5, 9, 4)])
def test_kernel_prefill_equals_its_steps_and_the_models_prefill(
    library: Path, variant: str, batch: int, length: int, pass_tokens: int
) -> None:
    """The prompt through the kernel's prefill (passes of `pass_tokens` token rows; (5, 9, 4): one token per
    sequence per pass) from a random state: bit for bit what `length` kernel steps give (the same sums per row),
    and within TOLERANCE of the model's parallel prefill (FFT or block form), logits and state."""
    fields, conversion = VARIANTS[variant]
    model = attach_ssm(small_model(**fields), **conversion)
    native = load_native_step(model, library, max_batch=POOL)
    start = random_pool(model, batch, scale=0.5)
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(7))
    layers = [layer.clone() for layer in start.layers]
    logits = native._runner.prefill(tokens, layers, pass_tokens=pass_tokens)  # type: ignore[attr-defined]

    stepped = start.clone()
    for position in range(length):
        step_logits = native(tokens[:, position].contiguous(), stepped)
    assert torch.equal(logits, step_logits)
    assert all(torch.equal(a, b) for a, b in zip(layers, stepped.layers, strict=True))

    expected_logits, expected_state = model.prefill(tokens, start)
    assert (logits - expected_logits).abs().max() <= TOLERANCE * expected_logits.abs().max()
    for got, want in zip(layers, expected_state.layers, strict=True):
        assert (got - want).abs().max() <= TOLERANCE * want.abs().max()


def test_native_prefill_starts_fresh_or_from_a_state_it_leaves_alone(library: Path) -> None:
    model = attach_ssm(small_model())
    native = load_native_step(model, library, max_batch=8)
    assert native.prefills
    tokens = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))
    logits, state = native.prefill(tokens[:, :5], None)
    expected, expected_state = model.prefill(tokens[:, :5])
    assert (logits - expected).abs().max() <= TOLERANCE * expected.abs().max()
    before = state.clone()
    logits, after = native.prefill(tokens[:, 5:], state)
    assert all(torch.equal(a, b) for a, b in zip(state.layers, before.layers, strict=True))  # input untouched
    expected, _ = model.prefill(tokens[:, 5:], expected_state)
    assert (logits - expected).abs().max() <= TOLERANCE * expected.abs().max()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 101\)"):
        native.prefill(torch.tensor([[1, 101]]), None)
    with pytest.raises(ValueError, match="state has batch 2"):
        native.prefill(tokens[:1], state)


def test_the_bound_pool_step_equals_the_step_on_the_pools_rows(library: Path) -> None:
    """`NativeStep.bind`: host token ids in, rows [0, B) of the pool stepped in place, as the tensor call does."""
    model = attach_ssm(small_model())
    native = load_native_step(model, library, max_batch=POOL)
    pool = random_pool(model, 8, scale=0.5)
    twin = pool.clone()
    bound = native.bind(pool)
    assert bound is not None
    for tokens in ([5, 17, 3], [9], [100, 0, 1, 2, 3, 4, 5, 6]):
        logits = bound(tokens).clone()
        expected = native(torch.tensor(tokens), twin.rows(0, len(tokens)))
        assert torch.equal(logits, expected)
    assert all(torch.equal(a, b) for a, b in zip(pool.layers, twin.layers, strict=True))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 101\)"):
        bound([101])
    with pytest.raises(ValueError, match="9 rows on a pool of 8 slots"):
        bound(list(range(9)))


def test_projections_split_between_threads_give_the_same_bits(library: Path) -> None:
    """`workers` threads share a projection's output panels from `parallel_min_bytes` of weights (0: every one):
    each output is still one thread's sum in the same order, so steps and prefills are bit for bit the same."""
    model = attach_ssm(small_model())
    one = native_kernel.KernelRunner(library, model, workers=1)
    split = native_kernel.KernelRunner(library, model, workers=3, parallel_min_bytes=0)
    start = random_pool(model, 8, scale=0.5)
    tokens = torch.randint(0, 101, (8, 9), generator=torch.Generator().manual_seed(5))
    states = {name: [layer.clone() for layer in start.layers] for name in ("one", "split")}
    for runner, name in ((one, "one"), (split, "split")):
        for position in range(3):
            states[name + str(position)] = [runner(tokens[:, position].contiguous(), states[name]).clone()]
        states[name + "prefill"] = [runner.prefill(tokens[:5, 3:], [layer[:5] for layer in states[name]])]
    for key in ("0", "1", "2", "prefill"):
        assert torch.equal(states["one" + key][0], states["split" + key][0])
    assert all(torch.equal(a, b) for a, b in zip(states["one"], states["split"], strict=True))
