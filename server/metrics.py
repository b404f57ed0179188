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
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)  # fmt: skip
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                   40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """All of the server's metrics, registered in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "tnn_time_to_first_token_seconds", "Arrival to first generated token.", buckets=TTFT_BUCKETS, registry=r
        )
        self.inter_token_latency = Histogram(
            "tnn_inter_token_latency_seconds", "Time between successive tokens of a choice.", buckets=TOKEN_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.e2e_request_latency = Histogram(
            "tnn_e2e_request_latency_seconds", "Arrival to the last token (or failure).", buckets=REQUEST_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.request_queue_time = Histogram(
            "tnn_request_queue_time_seconds", "Arrival to admission into state slots.", buckets=REQUEST_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.request_prefill_time = Histogram(
            "tnn_request_prefill_time_seconds", "Admission to the first token (prefill).", buckets=REQUEST_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.decode_step = Histogram(
            "tnn_decode_step_seconds", "One batched step (model + sampling) for every running sequence.",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "tnn_batch_size", "Running sequences per decode step.", buckets=BATCH_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("tnn_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.generation_tokens = Counter("tnn_generation_tokens", "Tokens generated.", registry=r)
        self.requests = Counter("tnn_requests", "Finished choices by finish reason.", ["finish_reason"], registry=r)
        self.errors = Counter("tnn_errors", "HTTP error answers by status code.", ["code"], registry=r)
        self.num_requests_running = Gauge(
            "tnn_num_requests_running", "Requests holding state slots (prefilling or decoding).", registry=r
        )
        self.num_requests_waiting = Gauge("tnn_num_requests_waiting", "Requests queued for slots.", registry=r)
        self.state_slots_used = Gauge("tnn_state_slots_used", "State slots in use.", registry=r)
        self.state_slots_total = Gauge("tnn_state_slots_total", "State slots (max concurrent sequences).", registry=r)
        self.state_bytes = Gauge("tnn_state_bytes", "Bytes of recurrent state held by sequences now.", registry=r)
        self.prefill_tokens = Counter(
            "tnn_prefill_tokens", "Tokens run through prefill, by kind: prompt (uncached part) or cache_fill.",
            ["kind"], registry=r,
        )  # fmt: skip
        self.prefix_cache_queries = Counter(
            "tnn_prefix_cache_queries", "Prompt tokens looked up in the prefix-state cache.", registry=r
        )
        self.prefix_cache_hits = Counter(
            "tnn_prefix_cache_hits", "Prompt tokens served from the prefix-state cache.", registry=r
        )
        self.prefix_cache_entries = Gauge(
            "tnn_prefix_cache_entries", "Cached prefix states, by tier (memory, disk).", ["tier"], registry=r
        )
        self.prefix_cache_bytes = Gauge(
            "tnn_prefix_cache_bytes", "Bytes of cached prefix states, by tier (memory, disk).", ["tier"], registry=r
        )
        self.prefix_cache_evictions = Counter(
            "tnn_prefix_cache_evictions", "Prefix states evicted, by tier (memory: spilled or dropped; disk).",
            ["tier"], registry=r,
        )  # fmt: skip
        for tier in ("memory", "disk"):
            self.prefix_cache_entries.labels(tier=tier)
            self.prefix_cache_bytes.labels(tier=tier)
            self.prefix_cache_evictions.labels(tier=tier)
        for kind in ("prompt", "cache_fill"):
            self.prefill_tokens.labels(kind=kind)
        for reason in ("stop", "length", "abort", "error"):
            self.requests.labels(finish_reason=reason)
