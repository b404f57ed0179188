"""Toeplitz Neural Network language model (Qin et al., ICLR 2023), with ETSC recurrent decoding.

tokens -> sqrt(d) * Embedding -> n_layers x [GTU token mixer, GLU channel mixer] (pre- or post-norm,
SimpleRMSNorm) -> LayerNorm -> tied output projection -> logits.
The GTU gates a Toeplitz operator (Tno) whose coefficients a_k = gamma^|k| RPE(k) come from a small MLP.

Three named entry points, no hidden mode switch:
- `forward(tokens)`: the parallel FFT path over the whole sequence, TNN kernels at every lag (the oracle).
- `prefill(tokens, state)`: prompt logits by FFT with the converted kernel, plus the recurrent state.
- `step(tokens, state)`: one token per sequence, O(1) in position, updating `state` in place.

Shapes: B batch, L tokens, d `d_model`, D `d_inner` (Toeplitz channels), N modes, h FIR head, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tnn.model.config import TnnConfig
from tnn.model.fd_tno import FdTno
from tnn.model.mixer import ToeplitzMixer
from tnn.model.rpe import Rpe, SimpleRMSNorm, activation
from tnn.model.ski_tno import SkiTno
from tnn.model.ssm import fused_step_available
from tnn.model.toeplitz import fft_dtype, toeplitz_matmul_fft

LAYER_NORM_EPS = 1e-5
PREFILL_TOKENS_PER_PASS = 2048  # prefill runs batch rows in passes of about this many tokens (activations in cache)


class Tno(ToeplitzMixer):
    """Toeplitz Neural Operator: y = T v per channel, T[i, j] = a_{i-j}, a_k = act(gamma^|k| RPE(k))."""

    def __init__(self, config: TnnConfig) -> None:
        super().__init__()
        self.causal = config.causal
        self.decay_kind = config.decay
        self.lower_bound = config.gamma  # lambda of the learned decay
        self.kernel_act = config.kernel_act
        self.normalize = config.normalize
        self.n_heads = config.n_heads
        self.rpe = Rpe(config)
        if config.decay == "fixed":
            # frozen, but a Parameter as in the original: it is part of the state dict and the parameter count
            self.gamma = nn.Parameter(torch.full((config.d_inner,), config.gamma), requires_grad=False)
        elif config.decay == "learned":
            self.gamma = nn.Parameter(torch.randn(config.d_inner))

    @property
    def channels(self) -> int:
        return self.rpe.out.linear.out_features

    def decay_rate(self, dtype: torch.dtype) -> Tensor:
        """Effective gamma per channel, (D,); ones for a model without decay."""
        if self.decay_kind == "fixed":
            return self.gamma.to(dtype)
        if self.decay_kind == "learned":
            return self.lower_bound + (1 - self.lower_bound) * torch.sigmoid(self.gamma.to(dtype))
        return super().decay_rate(dtype)

    def _apply_kernel_act(self, coef: Tensor) -> Tensor:
        if self.kernel_act == "none":
            return coef
        act = activation(self.kernel_act)
        heads = coef.view(coef.shape[0], self.n_heads, -1)  # (K, D) -> (K, h, e): "exp" normalises per head
        return act(heads).view_as(coef)

    def coefficients(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Kernel for `length` tokens: a_k for lags 0..length-1 (length, D) and, if bidirectional,
        lags -1..-(length-1) (length-1, D). Positions and coefficients in `dtype` (float32 or wider)."""
        device = self.rpe.pos_proj.weight.device
        lags = torch.arange(length, device=device, dtype=dtype)  # (L,)
        gamma = self.decay_rate(dtype)  # (D,)
        powers = gamma[None, :] ** lags[:, None]  # (L, D); lag 0 gets gamma^0 = 1
        coef_pos = self._apply_kernel_act(self.rpe(lags) * powers)  # (L, D)
        if self.causal:
            return coef_pos, None
        neg = self.rpe(-lags[1:]) * powers[1:]  # (L-1, D): lags -1..-(L-1)
        return coef_pos, self._apply_kernel_act(neg)

    def undecayed_coefficients(self, length: int) -> tuple[Tensor, Tensor]:
        """For conversion, in float64: t (length, D) with a_k = gamma^k t_k, and gamma (D,)."""
        if self.kernel_act != "none":
            return super().undecayed_coefficients(length)
        gamma = self.decay_rate(torch.float64)
        return self.rpe(torch.arange(length, device=gamma.device, dtype=torch.float64)), gamma

    def forward(self, v: Tensor) -> Tensor:
        """v: (B, L, D) -> (B, L, D) by the FFT Toeplitz product with the TNN kernel."""
        dt = fft_dtype(v.dtype)
        coef_pos, coef_neg = self.coefficients(v.shape[1], dt)
        y = toeplitz_matmul_fft(v.to(dt), coef_pos, coef_neg)
        if self.normalize:
            y = y / toeplitz_matmul_fft(torch.ones_like(v[:1], dtype=dt), coef_pos, coef_neg)
        return y.to(v.dtype)


def token_mixer(config: TnnConfig) -> ToeplitzMixer:
    """The Toeplitz operator `config.operator` names: the TNN's Tno, FD-TNN's FdTno or SKI-TNN's SkiTno."""
    mixers: dict[str, Callable[[TnnConfig], ToeplitzMixer]] = {"tnn": Tno, "fd": FdTno, "ski": SkiTno}
    return mixers[config.operator](config)


class Gtu(nn.Module):
    """Gated Toeplitz Unit: out_proj( act(u_proj x) * Tno(act(v_proj x)) ); the gate is U, Tno acts on V."""

    def __init__(self, config: TnnConfig) -> None:
        super().__init__()
        self.act = activation(config.gtu_act)
        self.u_proj = nn.Linear(config.d_model, config.d_inner, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, config.d_inner, bias=config.bias)
        self.out_proj = nn.Linear(config.d_inner, config.d_model, bias=config.bias)
        self.tno = token_mixer(config)
        self.norm = SimpleRMSNorm(config.d_inner) if config.gtu_norm else None

    def _gate(self, x: Tensor, mixed: Tensor) -> Tensor:
        y = self.act(self.u_proj(x)) * mixed  # (..., D)
        if self.norm is not None:
            y = self.norm(y)
        return self.out_proj(y)  # (..., d)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, d) -> (B, L, d)."""
        return self._gate(x, self.tno(self.act(self.v_proj(x))))

    def prefill(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        mixed, state = self.tno.prefill(self.act(self.v_proj(x)), state)
        return self._gate(x, mixed), state

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, d) -> (B, d)."""
        mixed, state = self.tno.step(self.act(self.v_proj(x)), state)
        return self._gate(x, mixed), state


class Glu(nn.Module):
    """Gated Linear Unit channel mixer: l3( act(l1 x) * l2 x )."""

    def __init__(self, config: TnnConfig) -> None:
        super().__init__()
        self.act = activation(config.glu_act)
        self.l1 = nn.Linear(config.d_model, config.d_glu, bias=config.bias)
        self.l2 = nn.Linear(config.d_model, config.d_glu, bias=config.bias)
        self.l3 = nn.Linear(config.d_glu, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.l3(self.act(self.l1(x)) * self.l2(x))


TokenMixer = Callable[[Tensor], Tensor]
Pooling = Literal["mean", "last"]


class MlmHead(nn.Module):
    """RoBERTa's masked-LM head: dense, GELU, LayerNorm, then the tied projection plus an output bias."""

    def __init__(self, config: TnnConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=LAYER_NORM_EPS)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        """x (..., d) -> logits (..., V)."""
        return F.linear(self.norm(F.gelu(self.dense(x))), embedding, self.bias)


class TnnBlock(nn.Module):
    """One decoder layer with fairseq semantics: pre-norm x + F(N(x)) or post-norm N(x + F(x))."""

    def __init__(self, config: TnnConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.gtu = Gtu(config)
        self.glu = Glu(config)
        self.token_norm = SimpleRMSNorm(config.d_model)
        self.feature_norm = SimpleRMSNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x: Tensor, mix_tokens: TokenMixer) -> Tensor:
        if self.pre_norm:
            x = x + self.dropout(mix_tokens(self.token_norm(x)))
            return x + self.dropout(self.glu(self.feature_norm(x)))
        x = self.token_norm(x + self.dropout(mix_tokens(x)))
        return self.feature_norm(x + self.dropout(self.glu(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self._residual(x, self.gtu)

    def _with_state(self, x: Tensor, mix_tokens: Callable[[Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The residual block around a stateful token mixer; returns the output and the mixer's new state."""
        new_state: list[Tensor] = []

        def mix(h: Tensor) -> Tensor:
            y, state = mix_tokens(h)
            new_state.append(state)
            return y

        return self._residual(x, mix), new_state[0]

    def prefill(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._with_state(x, lambda h: self.gtu.prefill(h, state))

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self._with_state(x, lambda h: self.gtu.step(h, state))


@dataclass(frozen=True)
class TnnState:
    """Recurrent state of a batch of sequences: per layer one real (B, 2N + h, D) tensor, batch first
    (rows [0, N) the modes' real parts, [N, 2N) their imaginary parts, [2N, 2N + h) the FIR history;
    tnn.model.ssm.step). float32 for float32/bf16/fp16 models, float64 for float64 models.

    Its size is fixed, independent of how many tokens were seen; that is what makes a TNN cheap to serve.
    `TnnLM.step` updates it in place; `rows` is a view of a row range (a slot pool's running prefix), so the
    engine can step [0, B) of a preallocated pool without copying.
    """

    layers: tuple[Tensor, ...]  # n_layers x (B, 2N + h, D) real

    @property
    def batch_size(self) -> int:
        return self.layers[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.layers)

    def rows(self, start: int, stop: int) -> TnnState:
        """A view of rows [start, stop): writes through it (`TnnLM.step`, `copy_rows_`) land in this state."""
        if not 0 <= start <= stop <= self.batch_size:
            raise ValueError(f"rows [{start}, {stop}) out of range for a batch of {self.batch_size}")
        return TnnState(tuple(s[start:stop] for s in self.layers))

    def copy_rows_(self, start: int, other: TnnState) -> None:
        """Write `other`'s batch into rows [start, start + other.batch_size), in place (a slot, a prefix cache
        entry restored into the pool); no index tensor, no allocation."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine[start : start + theirs.shape[0]].copy_(theirs)

    def zero_rows_(self, start: int, stop: int) -> None:
        """Reset rows [start, stop) to the fresh-sequence state, in place."""
        for s in self.layers:
            s[start:stop].zero_()

    def clone(self) -> TnnState:
        return TnnState(tuple(s.clone() for s in self.layers))

    def gather(self, rows: Tensor | list[int]) -> TnnState:
        """The state of `rows` (in that order), as a new batch."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.layers[0].device)
        return TnnState(tuple(s.index_select(0, index) for s in self.layers))

    def scatter_(self, rows: Tensor | list[int], other: TnnState) -> None:
        """Write `other`'s batch into `rows` of this state, in place (preallocated slot buffers)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.layers[0].device)
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.index_copy_(0, index, theirs)

    def repeat(self, counts: int) -> TnnState:
        """Each row repeated `counts` times in a row (n > 1 completions share one prefill)."""
        return TnnState(tuple(s.repeat_interleave(counts, dim=0) for s in self.layers))

    @staticmethod
    def cat(states: Iterable[TnnState]) -> TnnState:
        states = list(states)
        return TnnState(tuple(torch.cat(group, dim=0) for group in zip(*(s.layers for s in states), strict=True)))


class TnnLM(nn.Module):
    """The TNN language model: tokens (B, L) int64 -> logits (B, L, V)."""

    def __init__(self, config: TnnConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        if torch.get_default_device().type == "meta":
            # shapes only (tnn.model.loading builds here, then assigns the weights): no initial values, since
            # torch's meta normal_ imports its compiler (seconds of every model load)
            weight = torch.empty(config.vocab_size, config.d_model)
            self.embed = nn.Embedding(config.vocab_size, config.d_model, config.padding_idx, _weight=weight)
        else:
            self.embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.padding_idx)
            nn.init.normal_(self.embed.weight, mean=0.0, std=config.d_model**-0.5)
            if config.padding_idx is not None:
                nn.init.zeros_(self.embed.weight[config.padding_idx])
        self.embed_norm = nn.LayerNorm(config.d_model, eps=LAYER_NORM_EPS) if config.embed_norm else None
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TnnBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=LAYER_NORM_EPS) if config.final_norm else None
        self.mlm_head = MlmHead(config) if config.mlm_head else None

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def _embed(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) * self.embed_scale  # (..., d)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.dropout(x)

    def _features(self, x: Tensor) -> Tensor:
        """The last layer's output after the final norm (if any): what the output projection sees."""
        return x if self.final_norm is None else self.final_norm(x)

    def _logits(self, x: Tensor) -> Tensor:
        x = self._features(x)
        if self.mlm_head is not None:
            return self.mlm_head(x, self.embed.weight)
        return F.linear(x, self.embed.weight)  # tied output projection: (..., d) -> (..., V)

    @torch.inference_mode()
    def pooled_features(self, tokens: Tensor, pooling: Pooling = "mean", lengths: Tensor | None = None) -> Tensor:
        """One vector per sequence (B, d) from the parallel path: the mean over positions of the final
        features, or the last position's. tokens (B, L); `lengths` (B,) marks right padding, which only a
        causal model may have (a bidirectional one would see the padding): positions >= length are ignored."""
        if tokens.shape[1] == 0:
            raise ValueError("an embedding needs at least one token")
        if lengths is not None and not self.config.causal:
            raise ValueError("a bidirectional model sees padding: batch only sequences of one length")
        features = self._features(self.hidden_states(tokens)[-1])  # (B, L, d)
        if lengths is None:
            return features.mean(dim=1) if pooling == "mean" else features[:, -1]
        lengths = lengths.to(features.device)
        if pooling == "last":
            return features[torch.arange(features.shape[0], device=features.device), lengths - 1]
        mask = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]  # (B, L)
        return (features * mask[..., None]).sum(dim=1) / lengths[:, None].to(features.dtype)

    def hidden_states(self, tokens: Tensor) -> list[Tensor]:
        """[embeddings, output of layer 0, ..., output of the last layer], each (B, L, d)."""
        _check_tokens(tokens, self.config.vocab_size, ndim=2)
        states = [self._embed(tokens)]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return states

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) int64 -> logits (B, L, V), the parallel FFT path with TNN kernels at every lag."""
        return self._logits(self.hidden_states(tokens)[-1])

    @property
    def is_converted(self) -> bool:
        return all(layer.gtu.tno.ssm is not None for layer in self.layers)

    def empty_state(self, batch_size: int) -> TnnState:
        """The zero state for `batch_size` sequences (what a fresh sequence starts from), allocated once:
        a slot pool is `empty_state(slots)`, stepped through `rows(0, B)`."""
        return TnnState(tuple(layer.gtu.tno.empty_state(batch_size) for layer in self.layers))

    def fuse_step(self, enabled: bool = True) -> bool:
        """Use the torch.compile'd step (state read and written once per step) instead of the eager in-place
        ops. Returns whether the fused step was switched on (torch.compile can be set up here); compilation
        happens at the first step of each dtype / head variant (seconds), which falls back to the eager step,
        logged, if it fails (`tnn.model.ssm.fused_step_compiled` tells), so call this once at start-up and warm
        up. The eager step is the default."""
        fused = enabled and fused_step_available()
        for layer in self.layers:
            layer.gtu.tno.fused_step = fused
        return fused

    def state_bytes_per_sequence(self) -> int:
        """Bytes of recurrent state one sequence holds, known before any request (for capacity planning)."""
        return self.empty_state(1).nbytes

    def _prefill_hidden(
        self, tokens: Tensor, state: TnnState | None, chunk_size: int, keep_all: bool
    ) -> tuple[Tensor, TnnState]:
        """Final-layer hidden states (B, L, d) (only the last chunk's unless `keep_all`) and the final state."""
        _check_tokens(tokens, self.config.vocab_size, ndim=2)
        if tokens.shape[1] == 0:
            raise ValueError("prefill needs at least one token per sequence")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if state is not None and state.batch_size != tokens.shape[0]:
            raise ValueError(f"state has batch {state.batch_size}, tokens have batch {tokens.shape[0]}")
        rows = max(1, PREFILL_TOKENS_PER_PASS // min(chunk_size, tokens.shape[1]))
        if tokens.shape[0] > rows:  # rows apart: each pass's activations stay in cache (they are independent)
            parts = [
                self._prefill_pass(
                    tokens[first : first + rows],
                    None if state is None else state.rows(first, min(first + rows, tokens.shape[0])),
                    chunk_size,
                    keep_all,
                )
                for first in range(0, tokens.shape[0], rows)
            ]
            return torch.cat([hidden for hidden, _ in parts]), TnnState.cat(final for _, final in parts)
        return self._prefill_pass(tokens, state, chunk_size, keep_all)

    def _prefill_pass(
        self, tokens: Tensor, state: TnnState | None, chunk_size: int, keep_all: bool
    ) -> tuple[Tensor, TnnState]:
        """`_prefill_hidden` for checked tokens (B, L) and a state of B rows (or None), all rows at once."""
        layer_states: list[Tensor | None] = list(state.layers) if state is not None else [None] * len(self.layers)
        chunks = []
        for start in range(0, tokens.shape[1], chunk_size):
            x = self._embed(tokens[:, start : start + chunk_size])  # (B, C, d)
            for i, layer in enumerate(self.layers):
                x, layer_states[i] = layer.prefill(x, layer_states[i])
            chunks = [*chunks, x] if keep_all else [x]
        final = TnnState(tuple(s for s in layer_states if s is not None))
        return torch.cat(chunks, dim=1), final

    @torch.inference_mode()
    def prefill(
        self, tokens: Tensor, state: TnnState | None = None, *, chunk_size: int = 2048
    ) -> tuple[Tensor, TnnState]:
        """Run a prompt (B, L) through the converted model in parallel, in chunks of `chunk_size` tokens,
        continuing from `state` (None: fresh sequences).

        Returns the logits of the last position (B, V) and the state after the prompt. No loop over
        positions: each chunk is an FFT convolution plus an FFT for the state, per layer.
        """
        hidden, final = self._prefill_hidden(tokens, state, chunk_size, keep_all=False)
        return self._logits(hidden[:, -1]), final

    @torch.inference_mode()
    def recurrent_logits(
        self, tokens: Tensor, state: TnnState | None = None, *, chunk_size: int = 2048
    ) -> tuple[Tensor, TnnState]:
        """Teacher-forced logits (B, L, V) of the converted (recurrent) model, equal to stepping token by
        token but computed like `prefill`. For scoring, prompt logprobs and evaluation past the conversion length."""
        hidden, final = self._prefill_hidden(tokens, state, chunk_size, keep_all=True)
        return self._logits(hidden), final

    @torch.inference_mode()
    def step(self, tokens: Tensor, state: TnnState) -> tuple[Tensor, TnnState]:
        """One token per sequence: tokens (B,) int64 -> logits (B, V). O(1) in position.

        `state` is updated in place (no new state buffers) and returned as the same object; it may be a
        `rows(0, B)` view of a larger preallocated pool."""
        if tokens.ndim != 1 or tokens.shape[0] != state.batch_size:  # no range check: no host sync per token
            raise ValueError(f"step needs tokens (B={state.batch_size},), got shape {tuple(tokens.shape)}")
        return self.step_logits(tokens, state), state

    def step_logits(self, tokens: Tensor, state: TnnState) -> Tensor:
        """The body of `step` without its checks and inference mode: what tnn.model.native_step traces."""
        x = self._embed(tokens)  # (B, d)
        for layer, layer_state in zip(self.layers, state.layers, strict=True):
            x, _ = layer.step(x, layer_state)
        return self._logits(x)  # (B, V)

    def save(self, directory: str | object) -> None:
        """Write the model directory (config.json, model.safetensors, ssm.safetensors if converted)."""
        from tnn.model.loading import save_model

        save_model(self, directory)


def _check_tokens(tokens: Tensor, vocab_size: int, *, ndim: int) -> None:
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be int64, got {tokens.dtype}")
    if tokens.ndim != ndim:
        raise ValueError(f"tokens must have {ndim} dims, got shape {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}), got range [{int(tokens.min())}, {int(tokens.max())}]"
        )
