"""Prometheus metrics (prefix tnn_), one CollectorRegistry per app so tests and several apps never collide.

Latency buckets follow vLLM's lists (so dashboards and SLOs port) with a 2 s TTFT bucket added and finer
sub-10 ms buckets for GPU decode steps. Counting rules (tests assert them exactly):
- per request: time_to_first_token, e2e_request_latency, request_queue_time, request_prefill_time, prompt_tokens;
- per choice: requests_total{finish_reason} (a request with n=2 counts twice), one inter_token_latency
  observation per generated token after a choice's first, generation_tokens (every sampled token, eos included);
- per engine step: decode_step_seconds and batch_size (running sequences in that step);
- errors_total{code}: HTTP error answers by status code ("400", "401", "429", "500", "503", ...);
- prefix cache (vLLM's names): prefix_cache_queries_total counts the prompt tokens looked up (prompts that opt
  out or ask for prompt logprobs are not looked up), prefix_cache_hits_total those served from the cache (the
  sum of usage.prompt_tokens_details.cached_tokens); prefill_tokens_total{kind} the tokens actually prefilled:
  "prompt" (prompt tokens minus cached ones) and "cache_fill" (extending a finished chat answer's state to the
  boundary where the next turn continues).
Every tnn_ series carries `model_name` (the served model id), as vLLM's do; the registry also holds the process
(process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...), platform and GC collectors, and no
`_created` series (prometheus_client's creation timestamps only double the series count).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)  # fmt: skip
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                   40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ModelLabeled(Generic[M]):
    """A metric with labels beyond `model_name`: `.labels(code="400")` fills in the model name."""

    def __init__(self, metric: M, model_name: str) -> None:
        self._metric = metric
        self._model_name = model_name

    def labels(self, **labels: str) -> M:
        return self._metric.labels(model_name=self._model_name, **labels)


class Metrics:
    """All of the server's metrics, registered in `self.registry`, labelled with `model_name`."""

    def __init__(self, model_name: str = "tnn", registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        self.model_name = model_name
        r = self.registry
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=r)

        def histogram(name: str, help_text: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, help_text, ["model_name"], buckets=buckets, registry=r).labels(model_name)

        def counter(name: str, help_text: str) -> Counter:
            return Counter(name, help_text, ["model_name"], registry=r).labels(model_name)

        def gauge(name: str, help_text: str) -> Gauge:
            return Gauge(name, help_text, ["model_name"], registry=r).labels(model_name)

        self.time_to_first_token = histogram(
            "tnn_time_to_first_token_seconds", "Arrival to first generated token.", TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "tnn_inter_token_latency_seconds", "Time between successive tokens of a choice.", TOKEN_BUCKETS
        )
        self.e2e_request_latency = histogram(
            "tnn_e2e_request_latency_seconds", "Arrival to the last token (or failure).", REQUEST_BUCKETS
        )
        self.request_queue_time = histogram(
            "tnn_request_queue_time_seconds", "Arrival to admission into state slots.", REQUEST_BUCKETS
        )
        self.request_prefill_time = histogram(
            "tnn_request_prefill_time_seconds", "Admission to the first token (prefill).", REQUEST_BUCKETS
        )
        self.decode_step = histogram(
            "tnn_decode_step_seconds", "One batched step (model + sampling) for every running sequence.", TOKEN_BUCKETS
        )
        self.batch_size = histogram("tnn_batch_size", "Running sequences per decode step.", BATCH_BUCKETS)
        self.prompt_tokens = counter("tnn_prompt_tokens", "Prompt tokens prefilled.")
        self.generation_tokens = counter("tnn_generation_tokens", "Tokens generated.")
        self.requests = ModelLabeled(
            Counter("tnn_requests", "Finished choices by finish reason.", ["model_name", "finish_reason"], registry=r),
            model_name,
        )
        self.errors = ModelLabeled(
            Counter("tnn_errors", "HTTP error answers by status code.", ["model_name", "code"], registry=r), model_name
        )
        self.num_requests_running = gauge(
            "tnn_num_requests_running", "Requests holding state slots (prefilling or decoding)."
        )
        self.num_requests_waiting = gauge("tnn_num_requests_waiting", "Requests queued for slots.")
        self.engine_calls_waiting = gauge(
            "tnn_engine_calls_waiting", "Queued model calls of other routes (embeddings batches) not yet run."
        )
        self.state_slots_used = gauge("tnn_state_slots_used", "State slots in use.")
        self.state_slots_total = gauge("tnn_state_slots_total", "State slots (max concurrent sequences).")
        self.state_bytes = gauge("tnn_state_bytes", "Bytes of recurrent state held by sequences now.")
        self.prefill_tokens = ModelLabeled(
            Counter("tnn_prefill_tokens", "Tokens run through prefill, by kind: prompt (uncached part), cache_fill "
                    "or embedding.", ["model_name", "kind"], registry=r),
            model_name,
        )  # fmt: skip
        self.prefix_cache_queries = counter("tnn_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("tnn_prefix_cache_hits", "Prompt tokens served from the prefix-state cache.")
        self.prefix_cache_entries = ModelLabeled(
            Gauge("tnn_prefix_cache_entries", "Cached prefix states, by tier (memory, disk).", ["model_name", "tier"],
                  registry=r),
            model_name,
        )  # fmt: skip
        self.prefix_cache_bytes = ModelLabeled(
            Gauge("tnn_prefix_cache_bytes", "Bytes of cached prefix states, by tier (memory, disk).",
                  ["model_name", "tier"], registry=r),
            model_name,
        )  # fmt: skip
        self.prefix_cache_evictions = ModelLabeled(
            Counter("tnn_prefix_cache_evictions", "Prefix states evicted, by tier (memory: spilled or dropped; disk).",
                    ["model_name", "tier"], registry=r),
            model_name,
        )  # fmt: skip
        self.engine_faults = ModelLabeled(
            Counter("tnn_engine_faults", "Exceptions the engine contained, by hook (each failed one request, or "
                    "skipped one cache write).", ["model_name", "hook"], registry=r),
            model_name,
        )  # fmt: skip
        self.prefix_cache_write_errors = counter(
            "tnn_prefix_cache_write_errors", "Disk-tier writes that failed (e.g. ENOSPC): the state stayed in memory."
        )
        for tier in ("memory", "disk"):
            self.prefix_cache_entries.labels(tier=tier)
            self.prefix_cache_bytes.labels(tier=tier)
            self.prefix_cache_evictions.labels(tier=tier)
        for kind in ("prompt", "cache_fill", "embedding"):
            self.prefill_tokens.labels(kind=kind)
        for reason in ("stop", "length", "abort", "error"):
            self.requests.labels(finish_reason=reason)
