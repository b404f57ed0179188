"""Roofline of a TNN decode step on this CPU: FLOPs and bytes per step against measured GEMM and copy peaks.

FLOPs: the matmuls' (torch.utils.flop_counter.FlopCounterMode) plus one per element every other op writes.
Bytes: the compulsory traffic of a step, as a perfectly fused kernel would move it: every model weight the step
reads (each once; the embedding table whole when the output head is tied to it), the state read and written, the
token ids and the logits written. Peaks: torch.mm of large square float32 matrices, and a large tensor copy (bytes
read + written), each at the thread counts asked for. The bound on a step is max(FLOPs / GEMM peak, bytes /
copy bandwidth); the measured step is `TnnLM.step` at that batch size, median of `repeats` after warm-up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from tnn.model import TnnLM
from tnn.model.tnn import TnnState

Step = Callable[[torch.Tensor, TnnState], Any]  # (tokens (B,), state) -> logits (B, V), the state in place

MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an (n, n) @ (n, n) float32 torch.mm on `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats)
    finally:
        torch.set_num_threads(previous)


def copy_bandwidth(threads: int, nbytes: int = 2**28, repeats: int = 5) -> float:
    """Bytes/s (read + written) of copying a `nbytes` float32 tensor into another on `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(nbytes // 4)
        dst = torch.empty_like(src)
        return 2 * nbytes / median_seconds(lambda: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(previous)


class _StepTraffic(TorchDispatchMode):
    """Which of the model's weights the ops read (by storage address), and elements written by non-matmul ops."""

    def __init__(self, weights: dict[int, int]) -> None:
        super().__init__()
        self.weights = weights  # data_ptr -> nbytes
        self.touched: set[int] = set()
        self.elementwise_flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for leaf in tree_leaves((args, kwargs or {})):
            if isinstance(leaf, torch.Tensor) and leaf.data_ptr() in self.weights:
                self.touched.add(leaf.data_ptr())
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket not in MATMULS:
            self.elementwise_flops += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def step_cost(model: TnnLM, batch: int) -> dict[str, float]:
    """FLOPs and compulsory bytes of one `model.step` of `batch` sequences."""
    state = model.empty_state(batch)
    tokens = torch.zeros(batch, dtype=torch.long)
    weights = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    traffic = _StepTraffic(weights)
    with FlopCounterMode(display=False) as flops, traffic:
        logits, _ = model.step(tokens, state)
    weight_bytes = sum(weights[p] for p in traffic.touched)
    io_bytes = 2 * state.nbytes + tokens.numel() * tokens.element_size() + logits.numel() * logits.element_size()
    return {
        "flops": float(flops.get_total_flops() + traffic.elementwise_flops),
        "bytes": float(weight_bytes + io_bytes),
        "weight_bytes": float(weight_bytes),
        "state_bytes": float(state.nbytes),
    }


def measured_step_seconds(model: TnnLM, batch: int, threads: int, repeats: int, step: Step | None = None) -> float:
    """Median seconds of one decode step of `batch` rows on `threads` threads: `step` (tokens, state) -> logits,
    or the eager `model.step`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        state = model.empty_state(batch)
        tokens = torch.randint(2, model.config.vocab_size, (batch,))
        run = step or (lambda tokens, state: model.step(tokens, state))
        return median_seconds(lambda: run(tokens, state), repeats, warmup=5)
    finally:
        torch.set_num_threads(previous)


def roofline(
    model: TnnLM, batches: list[int], threads: int, repeats: int = 30, *, step: Step | None = None, name: str = "eager"
) -> dict[str, Any]:
    """Peaks at 1 and `threads` threads, then per batch size: cost, bound and measured step (`step`, named `name`,
    on `threads` threads; default the eager step)."""
    peaks = {
        "gemm_flops_per_s": {n: gemm_peak(n) for n in sorted({1, threads})},
        "copy_bytes_per_s": {n: copy_bandwidth(n) for n in sorted({1, threads})},
    }
    rows = []
    for batch in batches:
        cost = step_cost(model, batch)
        compute = cost["flops"] / peaks["gemm_flops_per_s"][threads]
        memory = cost["bytes"] / peaks["copy_bytes_per_s"][threads]
        measured = measured_step_seconds(model, batch, threads, repeats, step)
        rows.append({
            "batch": batch, **cost,
            "compute_bound_ms": 1000 * compute, "memory_bound_ms": 1000 * memory,
            "bound_ms": 1000 * max(compute, memory), "bound_tokens_per_s": batch / max(compute, memory),
            "measured_step_ms": 1000 * measured, "measured_tokens_per_s": batch / measured,
            "fraction_of_bound": max(compute, memory) / measured,
        })  # fmt: skip
    return {"threads": threads, "step": name, "peaks": peaks, "rows": rows}


def roofline_lines(result: dict[str, Any]) -> list[str]:
    """One printable line per batch size."""
    threads = result["threads"]
    gemm = result["peaks"]["gemm_flops_per_s"]
    copy = result["peaks"]["copy_bytes_per_s"]
    lines = [
        "peaks: GEMM " + ", ".join(f"{v / 1e9:.1f} GFLOP/s at {n} thread(s)" for n, v in gemm.items())
        + "; copy " + ", ".join(f"{v / 1e9:.1f} GB/s at {n} thread(s)" for n, v in copy.items())
    ]  # fmt: skip
    for row in result["rows"]:
        lines.append(
            f"roofline B={row['batch']}: {row['flops'] / 1e6:.1f} MFLOP, {row['bytes'] / 1e6:.2f} MB per step -> "
            f"compute {row['compute_bound_ms']:.3f} ms, memory {row['memory_bound_ms']:.3f} ms at {threads} threads; "
            f"measured ({result.get('step', 'eager')}) {row['measured_step_ms']:.3f} ms "
            f"({100 * row['fraction_of_bound']:.0f}% of the bound, "
            f"{row['measured_tokens_per_s']:,.0f} of {row['bound_tokens_per_s']:,.0f} tokens/s)"
        )
    return lines
