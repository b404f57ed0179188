"""The decode step as one hand-written C++ function (native_kernel.cpp, AVX2 + FMA, float32, one thread).

Where the AOTInductor step (tnn.model.native_step) calls a library GEMM per projection, this kernel streams weights
it packed itself into panels of 16 outputs x K inputs: at a small batch every weight is read once per step (the
batch-1 step is bound by reading 11 MB of weights), at a large one a register-blocked micro-kernel (6 rows x 16
outputs) keeps a panel in cache while the batch goes past it. Element-wise work (norms, SiLU, the SSM update in
place, residuals) runs between the GEMMs on rows that are still in L1.

The library is generic, not per model: it takes the packed weights as pointers, so one build serves every model.
It is compiled once per machine with the system C++ compiler (seconds) into the cache folder the AOTInductor
packages use, named by a key of what the machine code depends on (`library_key`: the source, the flags, the
compiler, the CPU's vector instruction set), and loaded with ctypes (tnn.model.native_lib). The weights are packed at load time
(milliseconds), so a step can never serve stale weights; `tnn.model.native_step.load_native_step` still checks it
against the eager step before use.

It covers the configs `unsupported_reason` accepts (float32, pre-norm, SiLU GTU and GLU, no GTU norm, no embedding
norm, no MLM head, an AVX2 CPU); for the others the AOTInductor step or the eager step serves.
"""

from __future__ import annotations

import array
import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tnn.model import native_lib
from tnn.model.native_lib import NativeSource
from tnn.model.tnn import TnnLM

SOURCE = Path(__file__).with_name("native_kernel.cpp")
FLAGS = ("-O3", "-mavx2", "-mfma", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-pthread")
PANEL = 16  # outputs per packed panel (native_kernel.cpp's PANEL)
PARALLEL_MIN_BYTES = 4 << 20  # a projection with this many bytes of weights or more is split between the CPUs
MAX_WORKERS = 4  # threads such a projection uses at most (it is bound by memory bandwidth, not arithmetic)
PREFILL_PASS_TOKENS = 64  # token rows per prefill pass: their activations stay in L2 (benchmarks/prefill_speed.py)
SIMPLE_RMS_EPS = 1e-8  # tnn.model.rpe.SRMS_EPS, what every SimpleRMSNorm of the step uses
VECTOR_ISAS = ("AVX2", "AVX512")  # torch.backends.cpu.get_cpu_capability() values with AVX2 + FMA


def unsupported_reason(model: TnnLM) -> str | None:
    """Why the kernel cannot run this model's step (None: it can)."""
    config = model.config
    checks = [
        (model.device.type == "cpu", f"the model is on {model.device}"),
        (model.dtype == torch.float32, f"the kernel is float32, the model {model.dtype}"),
        (model.is_converted, "the model is not converted"),
        (not model.training, "the model is in training mode (dropout)"),
        (config.norm_position == "pre", "post-norm layers"),
        (config.gtu_act == "silu" and config.glu_act == "silu", f"activations {config.gtu_act}/{config.glu_act}"),
        (not config.gtu_norm, "a GTU norm"),
        (not config.embed_norm, "an embedding norm"),
        (not config.mlm_head, "an MLM head"),
        (torch.backends.cpu.get_cpu_capability() in VECTOR_ISAS, "no AVX2 on this CPU"),
    ]
    return next((f"native kernel: {why}" for ok, why in checks if not ok), None)


def _source() -> NativeSource:
    return NativeSource(SOURCE, FLAGS, cxx=True)


def library_key() -> str:
    """Hex digest of what the built library depends on: source, flags, compiler, CPU vector ISA."""
    return native_lib.library_key(_source())


def library_path(cache_dir: Path) -> Path:
    """The kernel's shared library in `cache_dir` (present or not)."""
    return cache_dir / f"kernel-{library_key()}.so"


def build_library(path: Path) -> Path:
    """Compile native_kernel.cpp into `path` (tnn.model.native_lib.build_library). Raises RuntimeError."""
    return native_lib.build_library(_source(), path)


def pack_panels(weight: Tensor) -> Tensor:
    """(N, K) -> (ceil(N/16), K, 16): per panel of 16 outputs, row k holds their weights for input k (zeros past N)."""
    n, k = weight.shape
    panels = -(-n // PANEL)
    padded = weight.new_zeros(panels * PANEL, k)
    padded[:n] = weight
    return padded.view(panels, PANEL, k).transpose(1, 2).contiguous()


def _bias(linear: torch.nn.Linear) -> Tensor:
    bias = linear.bias
    return torch.zeros(linear.out_features) if bias is None else bias.detach().clone()


class KernelRunner:
    """The loaded library with one model's packed weights: `(tokens (B,), layer states) -> logits (B, V)`, the
    states (contiguous, float32) updated in place. Build it with `unsupported_reason(model)` None."""

    def __init__(
        self, library: Path, model: TnnLM, *, workers: int | None = None, parallel_min_bytes: int = PARALLEL_MIN_BYTES
    ) -> None:
        """workers: threads a projection of at least `parallel_min_bytes` of weights is split between (None: the
        CPUs this process may use, at most MAX_WORKERS). The shipped model has none that large; the paper width's
        output projection (96 MB) is bound by one core's memory bandwidth."""
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        library_handle = native_lib.open_library(library)
        self._step = library_handle.tnn_step
        self._step.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
        self._step.restype = ctypes.c_int
        self._prefill = library_handle.tnn_prefill
        self._prefill.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
        self._prefill.restype = ctypes.c_int
        self._decode_run = library_handle.tnn_decode_run
        self._decode_run.argtypes = (
            [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_double]
            + [ctypes.c_void_p] * 12
        )  # fmt: skip
        self._decode_run.restype = ctypes.c_int64
        config = model.config
        self.vocab_size = config.vocab_size
        final_norm = model.final_norm
        d = config.d_model
        tensors = [
            model.embed.weight.detach().clone(),  # (V, d): rows gathered
            pack_panels(model.embed.weight.detach()),  # the tied output projection
            final_norm.weight.detach().clone() if final_norm is not None else torch.ones(d),
            final_norm.bias.detach().clone() if final_norm is not None else torch.zeros(d),
        ]
        dims = [d, config.d_inner, config.d_glu, config.vocab_size, config.n_layers, int(final_norm is not None)]
        for layer in model.layers:
            gtu, glu = layer.gtu, layer.glu
            ssm = gtu.tno._step_weights
            assert ssm is not None  # converted (checked above)
            tensors += [
                pack_panels(torch.cat([gtu.u_proj.weight, gtu.v_proj.weight]).detach()),
                torch.cat([_bias(gtu.u_proj), _bias(gtu.v_proj)]),
                pack_panels(gtu.out_proj.weight.detach()),
                _bias(gtu.out_proj),
                pack_panels(torch.cat([glu.l1.weight, glu.l2.weight]).detach()),
                torch.cat([_bias(glu.l1), _bias(glu.l2)]),
                pack_panels(glu.l3.weight.detach()),
                _bias(glu.l3),
                *(t.detach().clone().contiguous() for t in (ssm.pole_real, ssm.pole_imag, ssm.weight_real)),
                *(t.detach().clone().contiguous() for t in (ssm.weight_imag, ssm.fir)),
            ]
            dims += [ssm.n_modes, ssm.fir_length]
        dims += [workers or min(usable_cpus(), MAX_WORKERS), parallel_min_bytes]
        self._tensors = tensors  # kept alive: the library reads them through the pointers below
        self._weights = (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))
        self._dims = (ctypes.c_int64 * len(dims))(*dims)
        self._scalars = (ctypes.c_float * 3)(model.embed_scale, SIMPLE_RMS_EPS, _layer_norm_eps(model))
        self._states = ctypes.c_void_p * config.n_layers

    def __call__(self, tokens: Tensor, layers: list[Tensor]) -> Tensor:
        """One decode step: tokens (B,) -> logits (B, V); `layers` (per layer (B, 2N + h, D)) advance in place."""
        tokens = _int64(tokens)
        batch = tokens.shape[0]
        logits = torch.empty(batch, self.vocab_size)  # (B, V)
        self._run_step(batch, tokens.data_ptr(), self._state_pointers(layers), logits.data_ptr())
        return logits

    def _run_step(self, rows: int, tokens: object, states: object, logits: int) -> None:
        """tnn_step on `rows` token ids at `tokens` (an address or a ctypes array), states, logits (an address)."""
        self._checked(self._step(self._dims, self._scalars, self._weights, rows, tokens, states, logits))

    def prefill(self, tokens: Tensor, layers: list[Tensor], *, pass_tokens: int = PREFILL_PASS_TOKENS) -> Tensor:
        """A prompt per sequence: tokens (B, L) -> logits (B, V) of the last position; `layers` (per layer
        (B, 2N + h, D)) advance in place by the L tokens, as L calls of the step would."""
        tokens = _int64(tokens)
        batch, length = tokens.shape
        if length == 0:
            raise ValueError("prefill needs at least one token per sequence")
        logits = torch.empty(batch, self.vocab_size)  # (B, V)
        states = self._state_pointers(layers)
        self._checked(self._prefill(self._dims, self._scalars, self._weights, batch, length, tokens.data_ptr(), states,
                                    logits.data_ptr(), pass_tokens))  # fmt: skip
        return logits

    def _checked(self, status: int) -> None:
        """A kernel entry point's status: 1 is a token id out of range (nothing was written)."""
        if status:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")

    def bind(self, layers: list[Tensor]) -> PoolStep:
        """A step over the leading rows of these state buffers (a pool: per layer (slots, 2N + h, D)), with every
        argument but the tokens prepared once (see PoolStep)."""
        return PoolStep(self, layers)

    def _state_pointers(self, layers: list[Tensor]) -> ctypes.Array[ctypes.c_void_p]:
        for layer in layers:
            if layer.dtype != torch.float32 or not layer.is_contiguous():
                raise ValueError(f"the native kernel takes contiguous float32 states, got {layer.dtype} "
                                 f"of strides {layer.stride()}")  # fmt: skip
        return self._states(*(layer.data_ptr() for layer in layers))


class PoolStep:
    """The kernel's step over rows [0, B) of a pool, `(B token ids as host ints) -> logits (B, V)`, with no torch op
    on the way: the ids go into a ctypes array, the state pointers (the pool's rows start at its base) and the
    logits buffer are made once. So the first place the calling thread lets go of the interpreter lock is the
    kernel itself (the engine's event loop thread runs meanwhile, tnn.server.outbox). The logits are a view of one
    buffer per batch size: read them before the next call."""

    def __init__(self, runner: KernelRunner, layers: list[Tensor]) -> None:
        self._runner = runner
        self._states = runner._state_pointers(layers)
        self._layers = layers  # kept alive: the kernel writes them through the pointers above
        self.slots = min(layer.shape[0] for layer in layers)
        self._tokens = (ctypes.c_int64 * self.slots)()
        self._logits = torch.empty(self.slots, runner.vocab_size)  # (slots, V)
        self._views = [self._logits[:rows] for rows in range(self.slots + 1)]  # rows -> (rows, V)
        self._logits_pointer = self._logits.data_ptr()
        sampler = native_lib.sampler_library()
        self._sampler = None if sampler is None else ctypes.cast(sampler.tnn_sample, ctypes.c_void_p)
        self._sample_scratch = array.array("f", bytes(4 * 3 * runner.vocab_size))  # tnn_sample's work space
        self._run_tokens = array.array("q")  # (steps, B) a run's sampled tokens, grown as needed
        self._run_finite = array.array("B")  # (steps, B) whether each row was finite
        self._no_interrupt = ctypes.c_int32(0)  # a run's interrupt flag when its caller gives none

    def __call__(self, tokens: Sequence[int]) -> Tensor:
        rows = len(tokens)
        if not 0 < rows <= self.slots:
            raise ValueError(f"a step of {rows} rows on a pool of {self.slots} slots")
        self._tokens[:rows] = tokens
        self._runner._run_step(rows, self._tokens, self._states, self._logits_pointer)
        return self._views[rows]

    @property
    def runs(self) -> bool:
        """Whether `run` is available: the native sampler is built (tnn.model.native_lib.sampler_library)."""
        return self._sampler is not None

    def run(
        self,
        tokens: Sequence[int],
        rows: RunRows,
        keys: Sequence[int],
        *,
        max_steps: int,
        budget_seconds: float,
        interrupt: ctypes.c_int32 | None = None,
    ) -> tuple[list[list[int]], list[list[bool]]]:
        """Up to `max_steps` steps of rows [0, B) with the native sampler between them, no Python in between (and the
        interpreter lock let go throughout): step s consumes what step s - 1 sampled (the first, `tokens`) and
        samples with the race keys keys[s * B : (s + 1) * B]. The run ends after a step in which a row can go no
        further (a non-finite row, its `remaining` tokens sampled, one of its `stop_ids` sampled), after a step
        that finds `interrupt` non-zero (another thread may set it during the run) or before a step that would end
        past `budget_seconds`. Exactly what that many `__call__`s with
        tnn.model.sampling_native.native_sample between them compute. -> per step run, the B sampled tokens and
        whether each row was finite (False: its token is meaningless)."""
        batch = len(tokens)
        if not 0 < batch <= self.slots:
            raise ValueError(f"a run of {batch} rows on a pool of {self.slots} slots")
        if self._sampler is None:
            raise RuntimeError("decode runs need the native sampler (check `runs` first)")
        if len(keys) != max_steps * batch:
            raise ValueError(f"a run of up to {max_steps} steps of {batch} rows needs {max_steps * batch} keys")
        offsets = [0]
        for ids in rows.stop_ids:
            offsets.append(offsets[-1] + len(ids))
        stop_ids = [token for ids in rows.stop_ids for token in ids]
        inputs = (
            array.array("q", tokens), array.array("f", rows.temperature), array.array("q", rows.top_k),
            array.array("f", rows.top_p), array.array("f", rows.min_p), array.array("Q", keys),
            array.array("q", rows.remaining), array.array("q", offsets), array.array("q", stop_ids or [0]),
        )  # fmt: skip
        if len(self._run_tokens) < max_steps * batch:
            self._run_tokens = array.array("q", bytes(8 * max_steps * batch))
            self._run_finite = array.array("B", bytes(max_steps * batch))
        addresses = [ctypes.c_void_p(values.buffer_info()[0]) for values in inputs]
        runner = self._runner
        steps = runner._decode_run(
            runner._dims, runner._scalars, runner._weights, batch, addresses[0], self._states, self._logits_pointer,
            max_steps, budget_seconds, self._sampler, *addresses[1:],
            ctypes.addressof(interrupt if interrupt is not None else self._no_interrupt),
            ctypes.c_void_p(self._run_tokens.buffer_info()[0]), ctypes.c_void_p(self._run_finite.buffer_info()[0]),
            ctypes.c_void_p(self._sample_scratch.buffer_info()[0]),
        )  # fmt: skip
        runner._checked(int(steps < 0))
        sampled = self._run_tokens[: steps * batch].tolist()
        finite = self._run_finite[: steps * batch].tolist()
        return (
            [sampled[s * batch : (s + 1) * batch] for s in range(steps)],
            [[flag == 1 for flag in finite[s * batch : (s + 1) * batch]] for s in range(steps)],
        )


@dataclass(frozen=True)
class RunRows:
    """Per row of a decode run (`PoolStep.run`): its sampling (temperature 0: greedy; top_k 0: off), the tokens it
    may still generate (>= 1) and the token ids that end it."""

    temperature: Sequence[float]
    top_k: Sequence[int]
    top_p: Sequence[float]
    min_p: Sequence[float]
    remaining: Sequence[int]
    stop_ids: Sequence[Sequence[int]]


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _int64(tokens: Tensor) -> Tensor:
    return tokens if tokens.dtype == torch.int64 and tokens.is_contiguous() else tokens.to(torch.int64).contiguous()


def _layer_norm_eps(model: TnnLM) -> float:
    return model.final_norm.eps if model.final_norm is not None else 0.0
