"""The whole decode step compiled ahead of time to native code (AOTInductor): the CPU's counterpart of CUDA graphs.

The eager `TnnLM.step` of a small model is dispatch-bound: about 130 small PyTorch ops per token (embedding, per
layer the GTU and GLU projections, the in-place SSM update, norms, the output projection), each a few microseconds
of Python and dispatcher around a few microseconds of arithmetic. `torch.export` traces that same step once, with
the batch as a symbolic dimension, and AOTInductor compiles it into one shared library: element-wise ops fused into
C++ loops, the GEMMs called straight into MKL, the state's in-place update written back by the generated code, and
no Python between the ops. One package serves every batch size from 1 to `max_batch`.

Compiling takes tens of seconds (minutes on a busy machine), so a package is built once per model and kept on
disk, keyed by everything the generated code depends on (`package_key`): the weights and SSM parameters, the
dtype, the torch version and the CPU's vector instruction set. Loading a kept package takes milliseconds.

Two backends make such a step. `kernel` (tnn.model.native_kernel) is one hand-written C++ function for the whole
step with weights packed for it, built once per machine and shared by every model: the default wherever it covers
the config (float32, pre-norm, SiLU; an AVX2 CPU), faster than the eager step at every batch size. `aoti`, the step
compiled by AOTInductor into a package per model, covers every other config (float64, post-norm, other
activations), faster than eager up to about 48 rows (docs/decode-speed.md). `preferred_backend` picks.

The eager step stays the reference twin: `load_native_step` checks a loaded package against it on a random batch
before it is used (a stale or foreign package is refused, never served), and tests tie the two together (float64
to round-off, float32 to a stated tolerance).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from tnn.model import native_kernel
from tnn.model.tnn import TnnLM, TnnState

logger = logging.getLogger(__name__)

PACKAGE_FORMAT = 1  # bump when the traced step changes meaning (a new key then builds a new package)
LAYOUT_KEY = "tnn_state_layout"  # package metadata: the state layout it was compiled for (`state_layout`)
MIN_MAX_BATCH = 2  # torch.export specialises a dimension whose range is a single value
AOTI_MAX_ROWS = 48  # the AOTInductor step is slower than the eager one from about 64 rows (docs/decode-speed.md)

Backend = Literal["kernel", "aoti"]
BACKEND_NAMES: dict[Backend, str] = {"kernel": "native kernel", "aoti": "AOTInductor"}


def preferred_backend(model: TnnLM) -> Backend:
    """The hand-written kernel where it covers the model's config, else the AOTInductor step."""
    return "kernel" if native_kernel.unsupported_reason(model) is None else "aoti"


class _StepGraph(nn.Module):
    """What is traced: `TnnLM.step` as a module of (tokens (B,), per-layer states) -> logits (B, V)."""

    def __init__(self, model: TnnLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, layers: list[Tensor]) -> Tensor:
        return self.model.step_logits(tokens, TnnState(tuple(layers)))


def package_key(model: TnnLM, max_batch: int) -> str:
    """Hex digest of what a compiled step depends on: weights, SSM parameters, config, dtype, torch, CPU ISA."""
    digest = hashlib.sha256()
    header = {
        "format": PACKAGE_FORMAT,
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "device": model.device.type,
        "dtype": str(model.dtype),
        "max_batch": max_batch,
        "config": model.config.to_dict(),
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for i, layer in enumerate(model.layers):
        weights = layer.gtu.tno._step_weights
        assert weights is not None, f"layer {i} has no recurrent form"
        for plane in (weights.pole_real, weights.pole_imag, weights.weight_real, weights.weight_imag, weights.fir):
            digest.update(plane.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def package_backend(package: Path) -> Backend:
    """Which backend built `package`: the kernel's shared library (.so) or an AOTInductor package (.pt2)."""
    return "kernel" if package.suffix == ".so" else "aoti"


def build_native_step(model: TnnLM, package: Path, *, max_batch: int, autotune: bool = False) -> Path:
    """Build `package` (written atomically; `package_path` names it): the kernel's library (seconds), or the model's
    decode step for batches 1..max_batch exported and compiled with AOTInductor (minutes of CPU). Raises where the
    kernel refuses the model, or export or the C++ toolchain fails. `autotune`: AOTInductor with max_autotune and
    its C++ GEMM template (benchmarks/native_step.py --autotune compares it; slower than the kernel everywhere)."""
    if not model.is_converted:
        raise ValueError("only a converted model has a decode step to compile")
    if package_backend(package) == "kernel":
        reason = native_kernel.unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        return native_kernel.build_library(package)
    max_batch = max(max_batch, MIN_MAX_BATCH)
    for layer in model.layers:
        layer.gtu.tno.fused_step = False  # the eager in-place ops are what gets traced
    example_batch = min(2, max_batch)
    tokens = torch.zeros(example_batch, dtype=torch.long, device=model.device)
    state = model.empty_state(example_batch)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    graph = _StepGraph(model).eval()
    with torch.no_grad():
        exported = torch.export.export(
            graph, (tokens, list(state.layers)), dynamic_shapes=({0: batch}, [{0: batch}] * len(state.layers))
        )
    package.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "freezing": True,  # weights as constants: packed for the GEMMs once, at compile time
        "aot_inductor.metadata": {LAYOUT_KEY: state_layout(model)},
    }
    if autotune:
        options |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
    with tempfile.TemporaryDirectory(dir=package.parent, prefix=".build-") as scratch:
        partial = Path(scratch) / package.name
        torch._inductor.aoti_compile_and_package(exported, package_path=str(partial), inductor_configs=options)
        os.replace(partial, package)
    return package


def state_layout(model: TnnLM) -> str:
    """The per-layer state shapes past the batch and their dtype, e.g. '4x(36,192):float32': what a package's
    generated code assumes (it aborts the process, not raises, on other shapes, so this is checked first)."""
    one = model.empty_state(1).layers
    shapes = ",".join(str(tuple(layer.shape[1:])).replace(" ", "") for layer in one)
    return f"{len(one)}x{shapes}:{str(one[0].dtype).removeprefix('torch.')}"


class NativeStep:
    """A loaded compiled decode step: `(tokens (B,), state) -> logits (B, V)`, the state updated in place, exactly
    as `TnnLM.step` (whose contract it keeps: `state` may be a `rows(0, B)` view of a pool)."""

    def __init__(
        self,
        runner: object,
        package: Path,
        max_batch: int,
        row_shapes: list[tuple[int, ...]],
        backend: Backend = "aoti",
    ) -> None:
        self._runner = runner
        self.package = package
        self.max_batch = max_batch
        self.row_shapes = row_shapes  # per layer, the state's shape past the batch
        self.backend = backend
        # the most rows it runs by default (server: --native-step-max-batch): where it stops beating the eager step
        self.preferred_max_rows = max_batch if backend == "kernel" else min(max_batch, AOTI_MAX_ROWS)

    @property
    def name(self) -> str:
        return BACKEND_NAMES[self.backend]

    @property
    def prefills(self) -> bool:
        """Whether `prefill` runs here: the kernel has a prefill entry point, an AOTInductor package does not."""
        return self.backend == "kernel"

    def prefill(self, tokens: Tensor, state: TnnState | None) -> tuple[Tensor, TnnState]:
        """`TnnLM.prefill` in the kernel (`prefills` must be true): tokens (B, L) -> logits of the last position
        (B, V) and a new state after the prompt, continuing from `state` (None: fresh; never modified). The same
        recurrence as L steps, its dense projections batched over the prompt's tokens."""
        batch = tokens.shape[0]
        if state is not None and state.batch_size != batch:
            raise ValueError(f"state has batch {state.batch_size}, tokens have batch {batch}")
        layers = [torch.zeros(batch, *shape) for shape in self.row_shapes] if state is None else [
            layer.clone(memory_format=torch.contiguous_format) for layer in state.layers
        ]  # fmt: skip
        logits = self._runner.prefill(tokens, layers)  # type: ignore[attr-defined]
        return logits, TnnState(tuple(layers))

    def bind(self, pool: TnnState) -> Callable[[Sequence[int]], Tensor] | None:
        """A step over rows [0, B) of `pool` taking host token ids, its arguments prepared once (the kernel's
        `PoolStep`), or None for a backend without one. Its logits are overwritten by the next call."""
        if self.backend != "kernel":
            return None
        layers = list(pool.layers)
        if [layer.shape[1:] for layer in layers] != self.row_shapes:
            raise ValueError(f"a pool of row shapes {[tuple(layer.shape[1:]) for layer in layers]}; the compiled "
                             f"step takes rows {self.row_shapes}")  # fmt: skip
        return self._runner.bind(layers)  # type: ignore[attr-defined]

    def __call__(self, tokens: Tensor, state: TnnState) -> Tensor:
        batch = tokens.shape[0]
        if not 0 < batch <= self.max_batch:
            raise ValueError(f"the compiled step takes 1..{self.max_batch} rows, got {batch}")
        layers = list(state.layers)
        if [layer.shape[1:] for layer in layers] != self.row_shapes or any(layer.shape[0] != batch for layer in layers):
            raise ValueError(f"{self.package}: state of shapes {[tuple(layer.shape) for layer in layers]} for "
                             f"{batch} tokens; the compiled step takes (B, *row) with rows {self.row_shapes}")  # fmt: skip
        return self._runner(tokens, layers)  # type: ignore[operator]


def load_native_step(model: TnnLM, package: Path, *, max_batch: int, tolerance: float | None = None) -> NativeStep:
    """Load a compiled step and check it against the eager step on a random batch (from a random state, so
    every term of the update counts). Raises ValueError naming the package when they differ by more than
    `tolerance` (relative to the logits' scale; default: 1e-4 for float32-or-narrower, 1e-10 for float64)."""
    row_shapes = [layer.shape[1:] for layer in model.empty_state(1).layers]
    if package_backend(package) == "kernel":
        kernel = native_kernel.KernelRunner(package, model)  # refuses a config it does not cover
        native = NativeStep(kernel, package, max(max_batch, 1), row_shapes, backend="kernel")
        check_against_eager(model, native, tolerance=tolerance)
        return native
    runner = torch._inductor.aoti_load_package(str(package))
    layout = runner.get_metadata().get(LAYOUT_KEY)  # type: ignore[attr-defined]
    if layout != state_layout(model):
        raise ValueError(f"{package}: compiled for state layout {layout}, this model's is {state_layout(model)}")
    native = NativeStep(runner, package, max(max_batch, MIN_MAX_BATCH), row_shapes)
    check_against_eager(model, native, tolerance=tolerance)
    return native


@torch.inference_mode()
def check_against_eager(model: TnnLM, native: NativeStep, *, tolerance: float | None = None, batch: int = 3) -> float:
    """Max relative difference of logits and state between the compiled and the eager step over two steps from
    one random state; raises ValueError above `tolerance`."""
    if tolerance is None:
        tolerance = 1e-10 if model.dtype == torch.float64 else 1e-4
    batch = min(batch, native.max_batch)
    generator = torch.Generator().manual_seed(0)
    eager_state = model.empty_state(batch)
    for layer_state in eager_state.layers:
        layer_state.copy_(torch.randn(layer_state.shape, generator=generator, dtype=layer_state.dtype) * 0.1)
    native_state = eager_state.clone()
    worst = 0.0
    for _ in range(2):
        tokens = torch.randint(0, model.config.vocab_size, (batch,), generator=generator).to(model.device)
        expected, _ = model.step(tokens, eager_state)
        actual = native(tokens, native_state)
        pairs = [(actual, expected), *zip(native_state.layers, eager_state.layers, strict=True)]
        for got, want in pairs:
            scale = want.abs().max().clamp_min(1e-30)
            worst = max(worst, float((got.double() - want.double()).abs().max() / scale))
    if not worst <= tolerance:  # also catches NaN
        raise ValueError(
            f"{native.package}: the compiled decode step differs from the eager step by {worst:.2e} "
            f"(relative; tolerance {tolerance:.0e}): a stale or foreign package"
        )
    return worst


def package_path(model: TnnLM, cache_dir: Path, *, max_batch: int, backend: Backend | None = None) -> Path:
    """The file of this model's compiled step in `cache_dir` (present or not): the kernel's library, shared by every
    model (named by `native_kernel.library_key`), or the model's AOTInductor package (by `package_key`).
    `backend` None: `preferred_backend`."""
    if (backend or preferred_backend(model)) == "kernel":
        return native_kernel.library_path(cache_dir)
    return cache_dir / f"step-{package_key(model, max(max_batch, MIN_MAX_BATCH))}.pt2"
