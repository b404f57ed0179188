"""The engine: one thread owns the model and runs continuous batching over recurrent state slots.

Each iteration: take new requests; drop cancelled ones (their slots are free at once); admit waiting requests
into free state slots (FIFO, all of a request's sequences at once); prefill under a per-iteration token budget
(equal-length chunks share one `prefill` call, long prompts continue next iteration from the carried state);
prefilled sequences sample their first token and join the running batch (n > 1 copies the prompt's state);
then one batched `step` for every running sequence, per-row sampling, detokenization and stop checks.
With the prefix-state cache (tnn.server.prefix_cache), admission restores the longest cached prefix of each
prompt, prefill stops at the cache's boundaries to store states, and a finished sequence stores its final state
(and, for chat, a "fill" unit extends it to where the next turn continues: a prefill with no sequences).
Events reach each request's asyncio queue through tnn.server.outbox (at most one loop wake-up in flight).
The event loop never runs model code; nothing here blocks it. An exception in one request's work fails that
request alone (docs/fault-isolation.md).

Beside it: tnn.server.engine_records (the bookkeeping of requests in flight), tnn.server.logprobs (sampled and
prompt logprobs), tnn.server.cache_fill (the prefix cache's fill policy), tnn.server.scheduler (slots, the
prefill plan).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tnn.model.sampling import sample
from tnn.model.tnn import TnnLM, TnnState
from tnn.server.batch import RunningBatch
from tnn.server.cache_fill import continuation_to_fill, restore
from tnn.server.capacity import parse_memory, plan_slots
from tnn.server.compiled_step import CompiledStepSource
from tnn.server.decode_graphs import DecodeStep
from tnn.server.decode_runs import RunKeys, run_rows
from tnn.server.engine_records import ChoiceSequence, PrefillUnit, Tracker
from tnn.server.generation import (
    CachedPrompt,
    ChoiceDelta,
    Event,
    FinishReason,
    GenerationRequest,
    PromptLogprobs,
    RequestError,
    RequestHandle,
    TokenLogprob,
)
from tnn.server.logprobs import PROMPT_LOGPROBS_CHUNK, record_prompt_logprobs, sampled_logprobs
from tnn.server.metrics import Metrics
from tnn.server.outbox import Outbox
from tnn.server.prefix_cache import PrefixCache, build_prefix_cache
from tnn.server.scheduler import SlotBudget, group_by, plan_prefill
from tnn.server.settings import Settings
from tnn.server.structured import Grammars, TokenMatcher, allowed_rows
from tnn.server.tokenizer import ServerTokenizer

logger = logging.getLogger(__name__)

NATIVE_PREFILL_MAX_TOKENS = 1024  # prompt tokens in one prefill above which torch's GEMMs on 2+ threads win
STATS_INTERVAL = 10.0  # seconds between the engine's activity log lines (none while idle)


@dataclass(frozen=True)
class RowFailure:
    message: str
    code: str


NON_FINITE = RowFailure("the model produced non-finite logits", "non_finite_logits")
NO_TOKEN_ALLOWED = RowFailure("the grammar allows no token here", "grammar_error")
SAMPLING_FAULT = RowFailure("internal error in the engine (sample)", "internal_error")


class Overloaded(Exception):
    """Every slot and queue place is taken: answer 429 at once."""


class NotAccepting(Exception):
    """Not ready yet, draining or stopped: answer 503."""


class Engine:
    """Owns the model on its own thread. `submit` (event loop) -> RequestHandle; `start`/`stop` around serving."""

    def __init__(self, model: TnnLM, tokenizer: ServerTokenizer, *, settings: Settings, metrics: Metrics) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = metrics
        self.device = model.device
        self.vocab_size = model.config.vocab_size
        # structured output: llguidance's view of the vocabulary (needs an eos token to end constrained output)
        self.grammars = None if tokenizer.eos_id is None else Grammars(tokenizer.hf, self.vocab_size, tokenizer.eos_id)
        # a bidirectional model (an encoder) has no recurrent state: it serves embeddings only, no slot pool
        self.generative = model.config.causal
        self.state_bytes_per_sequence = model.state_bytes_per_sequence() if self.generative else 0
        self.slot_plan = (
            plan_slots(
                parse_memory(settings.state_memory), self.state_bytes_per_sequence, settings.max_num_seqs, self.device
            )
            if self.generative
            else None
        )
        slots = self.slot_plan.slots if self.slot_plan is not None else settings.max_num_seqs
        self.slots = SlotBudget(slots)
        self.fused_step = self.generative and model.fuse_step(settings.fused_step)  # False without torch.compile
        self.capacity = slots + settings.max_waiting_requests  # sequences
        self.prefix_cache: PrefixCache | None = (
            build_prefix_cache(model, settings, metrics) if self.generative else None
        )
        self.accepting = False
        self._outstanding = 0  # sequences submitted and not finished
        self._lock = threading.Lock()
        self._inbox: deque[RequestHandle] = deque()
        self._waiting: deque[Tracker] = deque()
        self._active: list[Tracker] = []
        self._prefilling: list[PrefillUnit] = []
        self._batch: RunningBatch[ChoiceSequence] = RunningBatch(
            model.empty_state(slots) if self.generative else TnnState(())
        )  # allocated once
        use_graphs = self.device.type == "cuda" and not settings.enforce_eager and settings.warmup
        self.decode_step = (
            DecodeStep(model, self._batch.pool, use_graphs=use_graphs, max_batch=settings.cuda_graph_max_batch)
            if self.generative
            else None
        )  # graphs captured at warm-up (none without it)
        self.compiled_step = CompiledStepSource(
            model,
            mode="off" if settings.enforce_eager or not self.generative else settings.native_step,
            max_batch=slots,
            cache_dir=settings.compile_cache_dir,
        )  # loaded or built from warm-up (or start) on; swapped into decode_step by the engine thread
        self._compiled_started = False
        self._pending: list[tuple[RequestHandle, Event]] = []
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any], int]] = deque()
        self._wake = threading.Event()
        self._attention = ctypes.c_int32(0)  # set by `_notify`; a decode run ends after the step that sees it
        self._stopping = False
        self._outbox: Outbox | None = None
        self._thread: threading.Thread | None = None
        self._last_stats = (time.monotonic(), 0, 0)  # time, prompt and generated tokens then
        self._shown_occupancy: tuple[object, ...] = ()  # what the gauges were last set from (_update_gauges)
        self._prompt_tokens = 0
        self._generated_tokens = 0
        self._decode_runs = settings.decode_run_ms > 0 and settings.decode_run_steps > 1  # tnn.server.decode_runs
        self._run_step_seconds = 1e-3  # the last decode run's mean step (sizes the next run's keys)
        metrics.state_slots_total.set(slots)

    # ---- event-loop side ------------------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._outbox = Outbox(loop)
        self._start_compiled_step()
        self._thread = threading.Thread(target=self._run, name="tnn-engine", daemon=True)
        self._thread.start()
        self.accepting = True

    @property
    def outstanding(self) -> int:
        """Sequences submitted and not finished (running or queued)."""
        return self._outstanding

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request. Raises Overloaded (slots and queue full) or NotAccepting (not serving)."""
        if not self.accepting or not self.alive:
            raise NotAccepting("the server is not accepting requests")
        need = request.n_sequences
        with self._lock:
            if self._outstanding + need > self.capacity:
                raise Overloaded(f"all {self.slots.total} state slots and the queue are in use")
            self._outstanding += need
        handle = RequestHandle(request, on_cancel=self._notify)
        self._inbox.append(handle)
        self._notify()
        return handle

    def run_in_engine(self, fn: Callable[[], Any], tokens: int = 1) -> concurrent.futures.Future[Any]:
        """Run `fn` (model work of another route, e.g. embeddings, over `tokens` tokens) on the engine thread
        between iterations. Raises NotAccepting when not serving; await the result with asyncio.wrap_future
        (cancelling it before it runs skips it)."""
        if not self.accepting or not self.alive:
            raise NotAccepting("the server is not accepting requests")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.append((fn, future, tokens))
        self._notify()
        return future

    def _notify(self) -> None:
        """New work for the engine thread (a request, a call, a cancellation, a stop): wake it, and end a decode
        run it is in after its current step."""
        self._attention.value = 1
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still running get a 503 error event."""
        self.accepting = False
        self._stopping = True
        self._notify()
        self.compiled_step.close()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.prefix_cache is not None:
            self.prefix_cache.close()  # the disk tier keeps what is in memory (not bounded by `timeout`)

    def close_outbox(self) -> None:
        """Loop thread, after `stop`: the last events delivered, the outbox's wake-up descriptor closed."""
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    def _start_compiled_step(self) -> None:
        """Load the kept compiled step or start its build (once; at warm-up, else at start)."""
        if self._compiled_started:
            return
        self._compiled_started = True
        self.compiled_step.start()
        self._install_compiled_step()

    def _install_compiled_step(self) -> None:
        native = self.compiled_step.take()
        if native is not None and self.decode_step is not None:
            self.decode_step.use_native(native, self.settings.native_step_max_batch)
            s = self.settings
            if self._decode_runs and self.decode_step.runner(min(s.decode_run_min_rows, self.slots.total)) is not None:
                logger.info("decode runs: up to %d steps (%g ms) per native call, with %d or more running sequences",
                            s.decode_run_steps, s.decode_run_ms, s.decode_run_min_rows)  # fmt: skip

    def grammar_matcher(self, grammar: str) -> TokenMatcher:
        assert self.grammars is not None, "grammars are compiled by Serving only when the engine has them"
        return self.grammars.matcher(grammar)

    # ---- warm-up ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def warmup(self) -> float:
        """Run the largest shapes once (prefill budget, a one-row and a full-pool step) before serving, then capture
        the decode step's CUDA graphs (on CUDA without --enforce-eager). Seconds.

        The pool's rows hold garbage afterwards; every admission overwrites its row whole."""
        start = time.perf_counter()
        slots = self.slots.total
        length = min(self.settings.max_prefill_tokens, self.settings.max_prompt_tokens)
        prompt = torch.full((1, length), self.tokenizer.eos_id or 0, dtype=torch.long, device=self.device)
        if not self.generative:
            self.model.pooled_features(prompt)
            return time.perf_counter() - start
        logits, _ = self.model.prefill(prompt)
        tokens = logits.argmax(dim=-1).expand(slots).contiguous()  # (slots,)
        for batch in sorted({1, min(2, slots), slots}):  # a compiled step specialises batch 1
            for _ in range(2):
                logits, _ = self.model.step(tokens[:batch], self._batch.pool.rows(0, batch))
        assert self.decode_step is not None
        self._start_compiled_step()
        if self.decode_step.native is not None:
            for batch in sorted({1, min(2, slots), slots}):
                self.decode_step(tokens[:batch].tolist())
        self.decode_step.capture()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    # ---- engine thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            if not self._has_work():
                self._wake.wait()
                self._wake.clear()
                continue
            self._attention.value = 0  # before taking the work: what arrives later interrupts this iteration's run
            self._run_calls()
            try:
                with torch.inference_mode():  # the state tensors are inference tensors: updated in place here
                    self._iteration()
            except Exception:  # outside every per-request hook: shared machinery (see docs/fault-isolation.md)
                logger.exception("engine iteration failed; failing the requests in flight")
                for tracker in list(self._active):
                    self._fail(tracker, "internal error in the engine")
                self._batch.clear()
                self._prefilling.clear()
                self.metrics.engine_faults.labels(hook="iteration").inc()
            self._deliver()
        while self._calls:
            self._calls.popleft()[1].set_exception(NotAccepting("the server is shutting down"))
        for tracker in list(self._active):
            self._fail(tracker, "the server is shutting down", status=503, code="shutting_down")
        self._deliver()
        self._update_gauges()

    def _has_work(self) -> bool:
        return bool(self._calls or self._inbox or self._waiting or self._prefilling or self._batch.rows)

    def _run_calls(self) -> None:
        """The queued `run_in_engine` calls, each result or exception into its future. While requests are
        generating, calls of at most `max_prefill_tokens` tokens (at least one call) per iteration: a large
        embeddings request interleaves with the decode steps instead of stalling them."""
        generating = bool(self._inbox or self._waiting or self._prefilling or self._batch.rows)
        spent = 0
        while self._calls and not (generating and spent >= self.settings.max_prefill_tokens):
            fn, future, tokens = self._calls.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled: its client is gone
            spent += max(tokens, 1)
            try:
                with torch.inference_mode():
                    future.set_result(fn())
            except Exception as exc:  # delivered to the awaiting route, which maps it to an HTTP error
                future.set_exception(exc)

    def _iteration(self) -> None:
        while self._inbox:
            tracker = Tracker(self._inbox.popleft())
            self._waiting.append(tracker)
            self._active.append(tracker)
        for tracker in [t for t in self._active if t.handle.cancelled]:
            self._close(tracker, tracker.handle.cancel_reason)
        self._prefill(fills_only=True)  # first: a chat's next turn, if already here, finds its previous answer's state
        self._admit()
        self._prefill()
        self._deliver()
        if len(self._batch):
            self._decode()
        self._update_gauges()
        self._log_stats()

    # ---- fault containment (docs/fault-isolation.md) ------------------------------------------------------------

    @contextmanager
    def _contained(self, hook: str, tracker: Tracker | None) -> Iterator[None]:
        """One request's work (`hook`): an exception fails `tracker` alone (its slots go back, its pins were
        released by the cache's context managers) and is counted; None: cache work, skipped."""
        try:
            yield
        except Exception:
            self._fault(hook, tracker)

    def _fault(self, hook: str, tracker: Tracker | None) -> None:
        """Count and log the exception being handled; fail `tracker` (None: cache work, nothing to fail)."""
        self.metrics.engine_faults.labels(hook=hook).inc()
        if tracker is None:
            logger.exception("engine: %s failed; skipped (the cache misses that state)", hook)
            return
        logger.exception("engine: %s failed for request %s; failing it alone", hook, tracker.request.request_id)
        self._fail(tracker, f"internal error in the engine ({hook})", code="internal_error")

    def _store_in_cache(self, tokens: list[int], state: TnnState) -> None:
        """A cache store that never fails a request: a fault skips the state."""
        assert self.prefix_cache is not None
        with self._contained("cache_store", None):
            self.prefix_cache.store(tokens, state)

    # ---- admission and prefill ------------------------------------------------------------------------------

    def _admit(self) -> None:
        now = time.monotonic()
        while self._waiting:
            tracker = self._waiting[0]
            if not self.slots.acquire(tracker.request.n_sequences):
                return
            self._waiting.popleft()
            with self._contained("admit", tracker):
                try:
                    self._admit_request(tracker, now)
                except Exception:  # the slots no sequence holds yet go back here; _fail frees the others
                    unbuilt = tracker.request.n_sequences - len(tracker.sequences)
                    if unbuilt:
                        self.slots.release(unbuilt)
                    raise

    def _admit_request(self, tracker: Tracker, now: float) -> None:
        """Build the request's sequences on `slots` and queue its prompts' prefills (from the cache's longest
        prefix when it has one)."""
        request = tracker.request
        tracker.admitted = now
        self.metrics.request_queue_time.observe(now - request.arrival)
        for p, prompt in enumerate(request.prompts):
            sequences = []
            for i in range(request.n):
                sequences.append(ChoiceSequence(tracker, p * request.n + i, self, prompt))
                tracker.sequences.append(sequences[-1])
            unit = PrefillUnit(tracker, p, prompt, sequences)
            self._prefilling.append(unit)
            if self.prefix_cache is not None and request.cache_prompt:
                self._restore(unit, lookup=request.prompt_logprobs is None)  # prompt logprobs need every token
            self.metrics.prompt_tokens.inc(len(prompt))
            self.metrics.prefill_tokens.labels(kind="prompt").inc(unit.remaining)
            self._prompt_tokens += len(prompt)

    def _restore(self, unit: PrefillUnit, *, lookup: bool = True) -> None:
        """Start `unit` from the longest cached prefix of its prompt and plan where it stores states."""
        assert self.prefix_cache is not None
        restore(self.prefix_cache, unit, self.device, self.settings.state_cache_interval, lookup=lookup)
        if unit.position and unit.tracker is not None:
            self._emit(unit.tracker, CachedPrompt(unit.prompt_index, unit.position))

    def _prefill(self, *, fills_only: bool = False) -> None:
        units = [u for u in self._prefilling if u.tracker is None or not fills_only]
        if not units:
            return
        remaining = [
            min(u.until_stop, PROMPT_LOGPROBS_CHUNK) if u.prompt_logprobs is not None else u.until_stop for u in units
        ]
        plan = plan_prefill(remaining, self.settings.max_prefill_tokens)
        chosen = [(unit, chunk) for unit, chunk in zip(units, plan, strict=True) if chunk > 0]
        keys = [
            (chunk, unit.state is None, id(unit) if unit.prompt_logprobs is not None else None)
            for unit, chunk in chosen
        ]
        for group in group_by(keys):
            members = [chosen[i][0] for i in group if not chosen[i][0].closed]
            if not members:
                continue
            chunk = chosen[group[0]][1]
            try:
                self._prefill_group(members, chunk)
            except Exception:
                if len(members) == 1:
                    self._prefill_fault(members[0])
                    continue
                logger.warning("prefill of %d prompts together failed; each alone", len(members), exc_info=True)
                for unit in members:
                    try:
                        self._prefill_group([unit], chunk)
                    except Exception:
                        self._prefill_fault(unit)

    def _prefill_fault(self, unit: PrefillUnit) -> None:
        """In an except block: the prefill of `unit` alone failed; its request fails (a cache fill is dropped)."""
        if unit in self._prefilling:
            self._prefilling.remove(unit)
        self._fault("prefill" if unit.tracker is not None else "cache_fill", unit.tracker)

    def _prefill_group(self, units: list[PrefillUnit], chunk: int) -> None:
        tokens = torch.cat([u.tokens[:, u.position : u.position + chunk] for u in units]).to(self.device)  # (k, C)
        state = None if units[0].state is None else TnnState.cat([u.state for u in units if u.state is not None])
        if units[0].prompt_logprobs is not None:  # a group of one (see the keys in _prefill)
            all_logits, new_state = self.model.recurrent_logits(tokens, state)  # (1, C, V)
            record_prompt_logprobs(units[0], tokens[0], all_logits[0])
            last_logits = all_logits[:, -1]  # (1, V)
        else:
            last_logits, new_state = self._prefill_tokens(tokens, state)  # (k, V)
        stores = []
        for i, unit in enumerate(units):
            unit.position += chunk
            unit.state = new_state if len(units) == 1 else new_state.rows(i, i + 1)  # a view: each use copies it
            if self.prefix_cache is not None and unit.position in unit.stops:
                stores.append((unit.prompt[: unit.position], unit.state))
            if unit.remaining == 0:
                self._prefilling.remove(unit)
                if unit.tracker is not None:
                    with self._contained("first_token", unit.tracker):
                        self._start_decoding(unit, last_logits[i : i + 1])
        if stores:
            self._deliver()  # the first tokens go out before the cache copies the prompts' states
            for tokens, state in stores:
                self._store_in_cache(tokens, state)

    def _prefill_tokens(self, tokens: Tensor, state: TnnState | None) -> tuple[Tensor, TnnState]:
        """`TnnLM.prefill` of tokens (k, C): in the native kernel where it is installed and the prompt is short
        enough that one thread beats torch's (docs/decode-speed.md), else the model's parallel form."""
        native = self.decode_step.native if self.decode_step is not None else None
        if (
            native is not None
            and native.prefills
            and (tokens.numel() <= NATIVE_PREFILL_MAX_TOKENS or torch.get_num_threads() == 1)
        ):
            return native.prefill(tokens, state)
        return self.model.prefill(tokens, state)

    def _start_decoding(self, unit: PrefillUnit, logits: Tensor) -> None:
        """The prompt is in the state: sample each choice's first token and join the running batch. logits (1, V)."""
        tracker = unit.tracker
        assert tracker is not None
        request = tracker.request
        if unit.prompt_logprobs is not None:
            self._emit(tracker, PromptLogprobs(unit.prompt_index, unit.prompt_logprobs))
        sequences = unit.sequences
        assert unit.state is not None
        if request.max_tokens == 0:  # scoring only (echo): nothing to generate
            for seq in sequences:
                self._emit(tracker, ChoiceDelta(seq.index, "", [], finish_reason="length"))
                self._finish(seq, "length")
            return
        n = len(sequences)
        state = unit.state.repeat(n) if n > 1 else unit.state  # n > 1 completions share the prefill
        tokens, logprobs, failures = self._sample_rows(sequences, logits.expand(n, -1))
        now = time.monotonic()
        if tracker.first_token is None:
            tracker.first_token = now
            self.metrics.time_to_first_token.observe(now - request.arrival)
            self.metrics.request_prefill_time.observe(now - (tracker.admitted or now))
        failure = next((f for f in failures if f is not None), None)
        if failure is not None:
            self._fail(tracker, failure.message, code=failure.code)
            return
        for seq, token, logprob in zip(sequences, tokens, logprobs, strict=True):
            with self._contained("token", tracker):
                self._accept_token(seq, token, logprob, now)
        if tracker.closed:
            return
        live = [i for i, seq in enumerate(sequences) if not seq.finished]
        if live:
            self._batch.add([sequences[i] for i in live], state if len(live) == n else state.gather(live))  # copied

    def _decode(self) -> None:
        self._install_compiled_step()  # a no-op but once, when a background build is ready
        sequences = list(self._batch.rows)
        if self._decode_run(sequences):
            return
        start = time.perf_counter()
        try:
            assert self.decode_step is not None
            logits = self.decode_step([seq.tokens[-1] for seq in sequences])  # (B, V); pool rows [0, B) in place
        except Exception:
            self._decode_failed(sequences)
            return
        sampled, logprobs, failures = self._sample_rows(sequences, logits)
        self.metrics.decode_step.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(sequences))
        now = time.monotonic()
        for seq, token, logprob, failure in zip(sequences, sampled, logprobs, failures, strict=True):
            if seq.tracker.closed:
                continue
            if failure is not None:
                self._fail(seq.tracker, failure.message, code=failure.code)
                continue
            try:  # `_contained("token", ...)` written out: a context manager per row cost more than the rest of it
                self._accept_token(seq, token, logprob, now)
            except Exception:
                self._fault("token", seq.tracker)

    def _decode_failed(self, sequences: list[ChoiceSequence]) -> None:
        """The decode step itself failed (shared machinery): every request in the batch fails."""
        logger.exception("decode step failed for a batch of %d", len(sequences))
        for tracker in {id(s.tracker): s.tracker for s in sequences}.values():
            self._fail(tracker, "internal error during decoding")
        self._batch.clear()

    def _decode_run(self, sequences: list[ChoiceSequence]) -> bool:
        """Several decode steps in one native call (tnn.server.decode_runs) when nothing else waits and every row
        samples plainly; each step's tokens then accepted as a step's would be. False: not run (step as usual)."""
        s = self.settings
        if not self._decode_runs or len(sequences) < s.decode_run_min_rows:
            return False
        if self._inbox or self._waiting or self._prefilling or self._calls:
            return False
        assert self.decode_step is not None
        runner = self.decode_step.runner(len(sequences))
        if runner is None:
            return False
        rows = run_rows(sequences, self.tokenizer.eos_id, self.vocab_size)
        if rows is None:
            return False
        start = time.perf_counter()
        # room for the steps the budget allows at the last run's pace (keys cost a draw each)
        budget = s.decode_run_ms / 1000
        max_steps = min(s.decode_run_steps, int(budget / self._run_step_seconds) + 1)
        try:
            keys = RunKeys([seq.generator for seq in sequences], max_steps, [seq.params.greedy for seq in sequences])
            run = runner.run([seq.tokens[-1] for seq in sequences], rows, keys.keys, max_steps=max_steps,
                             budget_seconds=budget, interrupt=self._attention)  # fmt: skip
        except Exception:
            self._decode_failed(sequences)
            return True
        sampled, finite = run
        keys.settle(len(sampled))
        seconds = (time.perf_counter() - start) / len(sampled)
        self._run_step_seconds = seconds
        for _ in sampled:
            self.metrics.decode_step.observe(seconds)
            self.metrics.batch_size.observe(len(sequences))
        now = time.monotonic()  # when the run's tokens are handed over, all at once
        for tokens, flags in zip(sampled, finite, strict=True):
            for seq, token, ok in zip(sequences, tokens, flags, strict=True):
                if seq.tracker.closed:
                    continue
                if not ok:
                    self._fail(seq.tracker, NON_FINITE.message, code=NON_FINITE.code)
                    continue
                try:
                    self._accept_token(seq, token, None, now, hold=True)
                except Exception:
                    self._fault("token", seq.tracker)
        for seq in sequences:
            if not seq.tracker.closed and not seq.finished:
                with self._contained("token", seq.tracker):
                    self._emit_pending(seq)
        return True

    def _sample_rows(
        self, sequences: list[ChoiceSequence], logits: Tensor
    ) -> tuple[list[int], list[TokenLogprob | None], list[RowFailure | None]]:
        """`_sample` for the batch; if it fails, each row alone, so that only the rows that fail alone fail."""
        try:
            return self._sample(sequences, logits)
        except Exception:
            if len(sequences) == 1:
                self.metrics.engine_faults.labels(hook="sample").inc()
                logger.exception("engine: sample failed for request %s", sequences[0].tracker.request.request_id)
                return [0], [None], [SAMPLING_FAULT]
            logger.warning("sampling a batch of %d failed; each row alone", len(sequences), exc_info=True)
        tokens: list[int] = []
        logprobs: list[TokenLogprob | None] = []
        failures: list[RowFailure | None] = []
        for i, seq in enumerate(sequences):
            token, logprob, failure = self._sample_rows([seq], logits[i : i + 1])
            tokens += token
            logprobs += logprob
            failures += failure
        return tokens, logprobs, failures

    def _sample(
        self, sequences: list[ChoiceSequence], logits: Tensor
    ) -> tuple[list[int], list[TokenLogprob | None], list[RowFailure | None]]:
        """One token per sequence from logits (B, V) with each sequence's parameters, generator and grammar;
        per row None, or why its token is meaningless (the caller fails that request)."""
        result = sample(
            logits,
            [seq.params for seq in sequences],
            [seq.generator for seq in sequences],
            output_counts=[seq.counts for seq in sequences],  # None for the rows without penalties
            prompt_mask=[seq.prompt_mask for seq in sequences],
            allowed=self._allowed(sequences),
        )
        tokens, finite_rows, allowed_rows_ok = result.on_host()
        logprobs = sampled_logprobs([seq.tracker.request.logprobs for seq in sequences], logits, tokens)
        failures = [
            None if finite and allowed else NON_FINITE if not finite else NO_TOKEN_ALLOWED
            for finite, allowed in zip(finite_rows, allowed_rows_ok, strict=True)
        ]
        return tokens, logprobs, failures

    def _allowed(self, sequences: list[ChoiceSequence]) -> list[Tensor | None] | None:
        """The constrained rows' allowed tokens (V,) bool, None for free rows; None when no row is constrained."""
        if all(seq.matcher is None for seq in sequences):
            return None
        return allowed_rows([seq.matcher for seq in sequences], self.vocab_size, self.device)

    def _accept_token(
        self, seq: ChoiceSequence, token: int, logprob: TokenLogprob | None, now: float, *, hold: bool = False
    ) -> None:
        """Append a sampled token and send what it completes; hold: unless it finishes the sequence, keep it
        pending (a decode run sends each row's tokens once, `_emit_pending`)."""
        request = seq.tracker.request
        if seq.tokens:
            self.metrics.inter_token_latency.observe(now - seq.last_time)
        seq.last_time = now
        seq.tokens.append(token)
        seq.pending_tokens.append(token)
        if logprob is not None:
            seq.pending_logprobs.append(logprob)
        self.metrics.generation_tokens.inc()
        self._generated_tokens += 1
        if seq.counts is not None:
            seq.counts[token] += 1
        finish: FinishReason | None = None
        if not self._advance_grammar(seq, token):
            return
        eos = token == self.tokenizer.eos_id or token in request.eos_token_ids
        if token in request.stop_token_ids or (eos and not request.ignore_eos):
            finish = "stop"  # the stop token's text is not part of the output
        elif seq.stream.add(token):
            finish = "stop"
        elif seq.matcher is not None and seq.matcher.finished:
            finish = "stop"  # the grammar is complete and allows nothing more
        elif len(seq.tokens) >= request.max_tokens:
            finish = "length"
        if finish is not None:
            seq.stream.finish()
        elif hold:
            return
        self._emit_pending(seq, finish)
        if finish is not None:
            self._finish(seq, finish)

    def _emit_pending(self, seq: ChoiceSequence, finish: FinishReason | None = None) -> None:
        """A delta of the sequence's tokens and text not yet sent, if there is text or it finishes."""
        offset = seq.stream.emitted
        text = seq.stream.take(final=finish is not None)
        if text or finish is not None:
            delta = ChoiceDelta(
                index=seq.index,
                text=text,
                tokens=seq.pending_tokens,
                logprobs=seq.pending_logprobs,
                finish_reason=finish,
                stop_reason=seq.stream.stop_reason,
                text_offset=offset,
            )
            seq.pending_tokens, seq.pending_logprobs = [], []
            self._emit(seq.tracker, delta)

    def _advance_grammar(self, seq: ChoiceSequence, token: int) -> bool:
        """Feed `token` to the sequence's grammar; False (the request failed) if the grammar refuses it."""
        if seq.matcher is None or seq.matcher.consume(token):
            return True
        self._fail(seq.tracker, f"the grammar refused token {token}: {seq.matcher.error}", code="grammar_error")
        return False

    # ---- finishing ----------------------------------------------------------------------------------------------

    def _finish(self, seq: ChoiceSequence, reason: FinishReason) -> None:
        if seq.finished:
            return
        seq.finished = True
        self.metrics.requests.labels(finish_reason=reason).inc()
        self.slots.release()
        if seq in self._batch.rows:
            if reason in ("stop", "length"):
                with self._contained("store_finished", None):  # the answer is complete: a fault costs the cache
                    self._store_finished(seq)
            self._batch.remove(seq)
        tracker = seq.tracker
        tracker.open -= 1
        if tracker.open == 0:
            self._retire(tracker, observe_latency=reason != "abort")

    def _store_finished(self, seq: ChoiceSequence) -> None:
        """Cache a finished sequence's state (prompt + every generated token but the last, which was sampled and
        never fed) and, for chat, queue a fill to the boundary where the conversation's next turn continues."""
        request = seq.tracker.request
        if self.prefix_cache is None or not request.cache_prompt:
            return
        assert self._batch.state is not None
        prompt = request.prompts[seq.index // request.n]
        fed = prompt + seq.tokens[:-1]
        row = self._batch.rows.index(seq)
        self._store_in_cache(fed, self._batch.state.rows(row, row + 1))  # the cache copies the row
        target = continuation_to_fill(self.prefix_cache, request, prompt, seq.stream.text)
        if target is None:
            return
        fill = PrefillUnit(None, 0, target, [])
        self._restore(fill)
        if fill.remaining > 0:
            self._prefilling.append(fill)
            self.metrics.prefill_tokens.labels(kind="cache_fill").inc(fill.remaining)

    def _close(self, tracker: Tracker, reason: FinishReason) -> None:
        """End every unfinished choice of a request with `reason` (abort: cancelled; error: failed)."""
        if tracker.closed:
            return
        if tracker in self._waiting:
            self._waiting.remove(tracker)
        self._prefilling = [u for u in self._prefilling if u.tracker is not tracker]
        unstarted = tracker.request.n_sequences - len(tracker.sequences)  # still queued: no sequences yet
        if unstarted:
            self.metrics.requests.labels(finish_reason=reason).inc(unstarted)
            tracker.open -= unstarted
        for seq in tracker.sequences:
            self._finish(seq, reason)
        if not tracker.closed:  # nothing was open
            self._retire(tracker, observe_latency=reason != "abort")

    def _fail(self, tracker: Tracker, message: str, *, status: int = 500, code: str = "generation_error") -> None:
        if tracker.closed:
            return
        self._emit(tracker, RequestError(message, status=status, code=code))
        self._close(tracker, "error")

    def _retire(self, tracker: Tracker, *, observe_latency: bool) -> None:
        tracker.closed = True
        if observe_latency:
            self.metrics.e2e_request_latency.observe(time.monotonic() - tracker.request.arrival)
        if tracker in self._active:
            self._active.remove(tracker)
        with self._lock:
            self._outstanding -= tracker.request.n_sequences

    # ---- delivery and gauges ------------------------------------------------------------------------------------

    def _emit(self, tracker: Tracker, event: Event) -> None:
        self._pending.append((tracker.handle, event))

    def _deliver(self) -> None:
        outbox = self._outbox
        if not self._pending or outbox is None:
            return
        batch, self._pending = self._pending, []
        outbox.send(batch)

    def _update_gauges(self) -> None:
        """The occupancy gauges, set only when what they show changed (not once per decode step)."""
        occupancy = (len(self._waiting) + len(self._inbox), len(self._calls), len(self._active) - len(self._waiting),
                     self.slots.used, len(self._batch), tuple(id(u.state) for u in self._prefilling))  # fmt: skip
        if occupancy == self._shown_occupancy:
            return
        self._shown_occupancy = occupancy
        m = self.metrics
        waiting, calls, running, slots_used = occupancy[:4]
        m.num_requests_waiting.set(waiting)
        m.engine_calls_waiting.set(calls)
        m.num_requests_running.set(running)
        m.state_slots_used.set(slots_used)
        prefill_bytes = sum(u.state.nbytes for u in self._prefilling if u.state is not None)
        m.state_bytes.set(self._batch.state_bytes() + prefill_bytes)

    def _log_stats(self) -> None:
        """Every STATS_INTERVAL seconds of activity: throughput and occupancy (the human twin of /metrics)."""
        now = time.monotonic()
        since, prompt, generated = self._last_stats
        if now - since < STATS_INTERVAL:
            return
        self._last_stats = (now, self._prompt_tokens, self._generated_tokens)
        logger.info(
            "prompt %.1f tok/s, generation %.1f tok/s; running %d, waiting %d, slots %d/%d",
            (self._prompt_tokens - prompt) / (now - since), (self._generated_tokens - generated) / (now - since),
            len(self._active) - len(self._waiting), len(self._waiting), self.slots.used, self.slots.total,
        )  # fmt: skip
