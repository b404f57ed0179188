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

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from tnn.model import native_lib
from tnn.model.native_lib import NativeSource
from tnn.model.tnn import TnnLM

SOURCE = Path(__file__).with_name("native_kernel.cpp")
FLAGS = ("-O3", "-mavx2", "-mfma", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno")
PANEL = 16  # outputs per packed panel (native_kernel.cpp's PANEL)
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

    def __init__(self, library: Path, model: TnnLM) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        self._step = native_lib.open_library(library).tnn_step
        self._step.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
        self._step.restype = ctypes.c_int
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
        self._tensors = tensors  # kept alive: the library reads them through the pointers below
        self._weights = (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))
        self._dims = (ctypes.c_int64 * len(dims))(*dims)
        self._scalars = (ctypes.c_float * 3)(model.embed_scale, SIMPLE_RMS_EPS, _layer_norm_eps(model))
        self._states = ctypes.c_void_p * config.n_layers

    def __call__(self, tokens: Tensor, layers: list[Tensor]) -> Tensor:
        if tokens.dtype != torch.int64 or not tokens.is_contiguous():
            tokens = tokens.to(torch.int64).contiguous()
        for layer in layers:
            if layer.dtype != torch.float32 or not layer.is_contiguous():
                raise ValueError(f"the native kernel takes contiguous float32 states, got {layer.dtype} "
                                 f"of strides {layer.stride()}")  # fmt: skip
        batch = tokens.shape[0]
        logits = torch.empty(batch, self.vocab_size)  # (B, V)
        states = self._states(*(layer.data_ptr() for layer in layers))
        if self._step(self._dims, self._scalars, self._weights, batch, tokens.data_ptr(), states, logits.data_ptr()):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        return logits


def _layer_norm_eps(model: TnnLM) -> float:
    return model.final_norm.eps if model.final_norm is not None else 0.0
