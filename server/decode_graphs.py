"""The batched decode step, eager or replayed from CUDA graphs captured per batch-size bucket.

On a GPU the decode step of a small recurrent model is launch-bound: dozens of small kernels per layer, each a few
microseconds of work behind a Python call. Replaying a captured CUDA graph launches the whole step at once (what
vLLM and gpt-fast do). One graph per bucket of a ladder (1, 2, 4, 8, 16, 24, 32, 48, 64, ...): B running sequences
replay the graph of the smallest bucket >= B. The extra rows step a padding token in the pool's rows [B, bucket),
which belong to no running sequence (every admission overwrites its row whole), so what they hold never matters.
The graph's inputs and outputs are static buffers: the tokens are copied in, logits are read from `logits[:B]`.

On a CPU the counterpart is the compiled step (tnn.model.native_step: the hand-written kernel, or AOTInductor for
configs the kernel does not cover): the whole step as one native call, for every batch from 1 to the pool's size (no
padding), installed with `use_native` once it is built and
checked against the eager step (tnn.server.compiled_step). Until then, above the largest bucket and under
`--enforce-eager`, the same step runs eagerly on rows [0, B); the padding can be turned on without graphs, which is
how the CPU tests check it.

The step path has no host round trip: the engine's token ids (host ints) go through a pinned staging buffer
into the static device buffer with a non-blocking copy, and the logits stay on the device for sampling. The
one device-to-host copy per step is the sampled tokens the stream needs (the engine's `_sample`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tnn.model.native_kernel import PoolStep
from tnn.model.native_step import NativeStep
from tnn.model.tnn import TnnLM, TnnState

logger = logging.getLogger(__name__)

MAX_CAPTURED_BATCH = 512  # vLLM's default ceiling: larger batches are compute-bound enough to run eagerly
WARMUP_STEPS = 2  # eager runs before a capture (allocations and compilation happen there, not in the graph)


def bucket_ladder(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 to 64, of 16 to 128, of 32 to 256, of 64 beyond; the last bucket is max_batch."""
    ladder = [1, 2, 4, 8]
    while ladder[-1] < max_batch:
        last = ladder[-1]
        ladder.append(last + (8 if last < 64 else 16 if last < 128 else 32 if last < 256 else 64))
    return sorted({b for b in ladder if b < max_batch} | {max_batch})


class DecodeStep:
    """`model.step` over the running rows [0, B) of `pool`, in place; `__call__(B token ids) -> logits (B, V)`.

    use_graphs: capture CUDA graphs (CUDA only; `capture()` must run once before serving).
    pad: step a whole bucket even without graphs (for tests of the padding; implied by use_graphs).
    """

    def __init__(
        self,
        model: TnnLM,
        pool: TnnState,
        *,
        use_graphs: bool,
        pad: bool = False,
        max_batch: int = MAX_CAPTURED_BATCH,
        pad_token: int = 0,
    ) -> None:
        if use_graphs and model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {model.device}")
        self.model = model
        self.pool = pool
        self.use_graphs = use_graphs
        self.pad = pad or use_graphs
        self.buckets = bucket_ladder(min(max_batch, pool.batch_size))
        self.pad_token = pad_token
        slots = pool.batch_size
        self.tokens = torch.full((slots,), pad_token, dtype=torch.long, device=model.device)  # (slots,) static
        pinned = model.device.type == "cuda"
        self.staging = torch.empty(slots, dtype=torch.long, pin_memory=pinned)  # (slots,) host side of the copy
        self.staged = torch.cuda.Event() if pinned else None  # the last copy out of `staging` finished
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, Tensor] = {}  # bucket -> (bucket, V) logits written by its graph
        self.native: NativeStep | None = None  # the compiled step (CPU), once installed
        self.pool_step: Callable[[Sequence[int]], Tensor] | None = None  # its step bound to the pool (kernel only)
        self.native_rows = 0  # batches up to this many rows run the compiled step

    def use_native(self, native: NativeStep, max_rows: int | None) -> None:
        """Run the compiled step from now on for batches of 1..min(max_rows, native.max_batch) rows (None: up to
        where its backend beats the eager step, `native.preferred_max_rows`); logged."""
        self.native = native
        self.native_rows = native.preferred_max_rows if max_rows is None else min(max_rows, native.max_batch)
        self.pool_step = native.bind(self.pool)
        logger.info("decode step: %s", self.describe())

    def bucket(self, batch: int) -> int | None:
        """The smallest bucket holding `batch` rows, or None above the ladder (eager)."""
        return next((b for b in self.buckets if b >= batch), None)

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture one graph per bucket, largest first (they share one memory pool). Seconds taken; 0 if eager.

        Overwrites the pool's rows with warm-up garbage: call it before any sequence is admitted."""
        if not self.use_graphs:
            return 0.0
        start = time.perf_counter()
        memory_pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device=self.model.device)
        side.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(side):
            for bucket in reversed(self.buckets):
                for _ in range(WARMUP_STEPS):
                    self._step(bucket)
        torch.cuda.current_stream(self.model.device).wait_stream(side)
        for bucket in reversed(self.buckets):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=memory_pool):
                self.outputs[bucket] = self._step(bucket)
            self.graphs[bucket] = graph
        torch.cuda.synchronize(self.model.device)
        seconds = time.perf_counter() - start
        logger.info("captured %d CUDA graphs of the decode step (batch %s) in %.1fs", len(self.graphs), self.buckets,
                    seconds)  # fmt: skip
        return seconds

    def describe(self) -> str:
        """For the startup log: whether the decode step replays CUDA graphs, and up to which batch."""
        if self.native is not None:
            prefill = "; prompts prefilled in the kernel" if self.native.prefills else ""
            return f"compiled native decode step ({self.native.name}) for batch <= {self.native_rows}, eager above{prefill}"
        if not self.use_graphs:
            return "eager decode step"
        return f"CUDA-graph decode step for batch <= {self.buckets[-1]} ({len(self.buckets)} buckets), eager above"

    def _step(self, rows: int) -> Tensor:
        logits, _ = self.model.step(self.tokens[:rows], self.pool.rows(0, rows))
        return logits  # (rows, V)

    def __call__(self, tokens: Sequence[int]) -> Tensor:
        """B token ids (host ints, one per running row) -> logits (B, V) on the model's device; the pool's rows
        [0, B) advance in place. The logits of a graph replay are a view of its output buffer: read them before
        the next call."""
        batch = len(tokens)
        if not 0 < batch <= self.pool.batch_size:
            raise ValueError(f"a step of {batch} rows on a pool of {self.pool.batch_size} slots")
        if self.pool_step is not None and batch <= self.native_rows:
            return self.pool_step(tokens)  # (B, V): no torch op, not even inference mode's, before the kernel
        return self._torch_step(tokens)

    def runner(self, batch: int) -> PoolStep | None:
        """What runs several steps of a batch of this many rows in one call (`PoolStep.run`, on the pool's rows
        [0, B)): the native kernel bound to the pool, with the native sampler, for a batch within the compiled
        step's rows; else None."""
        step = self.pool_step
        return step if isinstance(step, PoolStep) and step.runs and batch <= self.native_rows else None

    @torch.inference_mode()
    def _torch_step(self, tokens: Sequence[int]) -> Tensor:
        batch = len(tokens)
        if self.staged is not None:
            self.staged.synchronize()  # never overwrite staging under a copy still in flight
        self.staging[:batch] = torch.as_tensor(tokens, dtype=torch.long)
        self.tokens[:batch].copy_(self.staging[:batch], non_blocking=True)  # the step waits for it on its stream
        if self.staged is not None:
            self.staged.record()
        if self.native is not None and batch <= self.native_rows:
            return self.native(self.tokens[:batch], self.pool.rows(0, batch))  # (B, V)
        bucket = self.bucket(batch) if self.pad else None
        if bucket is None:
            logits, _ = self.model.step(self.tokens[:batch], self.pool.rows(0, batch))
            return logits  # (B, V)
        self.tokens[batch:bucket].fill_(self.pad_token)
        graph = self.graphs.get(bucket)
        if graph is None:
            return self._step(bucket)[:batch]
        graph.replay()
        return self.outputs[bucket][:batch]
