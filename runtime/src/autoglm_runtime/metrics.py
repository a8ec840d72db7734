"""Prometheus metrics of the runtime — every metric name lives here, in one place.

The Grafana dashboard and the alert rules are checked against :data:`METRIC_NAMES`. Each app gets
its own ``CollectorRegistry`` so tests (and several apps in one process) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from autoglm_runtime.memory import gpu_memory_allocated

REQUESTS_TOTAL = "autoglm_requests_total"
REQUEST_DURATION = "autoglm_request_duration_seconds"
TIME_TO_FIRST_TOKEN = "autoglm_time_to_first_token_seconds"
GENERATED_TOKENS_TOTAL = "autoglm_generated_tokens_total"
PROMPT_TOKENS_TOTAL = "autoglm_prompt_tokens_total"
BATCH_SIZE = "autoglm_batch_size"
QUEUE_DEPTH = "autoglm_queue_depth"
INFLIGHT_REQUESTS = "autoglm_inflight_requests"
MODEL_LOAD_SECONDS = "autoglm_model_load_seconds"
MODEL_MEMORY_BYTES = "autoglm_model_memory_bytes"
GPU_MEMORY_ALLOCATED = "autoglm_gpu_memory_allocated_bytes"
MODEL_READY = "autoglm_model_ready"
CIRCUIT_BREAKER_OPEN = "autoglm_circuit_breaker_open"
GENERATION_FAILURES_TOTAL = "autoglm_generation_failures_total"
KV_CACHE_BLOCKS = "autoglm_kv_cache_blocks"
PREFIX_CACHE_QUERIED_TOKENS = "autoglm_prefix_cache_queried_tokens_total"
PREFIX_CACHE_HIT_TOKENS = "autoglm_prefix_cache_hit_tokens_total"
PREFIX_CACHE_HIT_RATIO = "autoglm_prefix_cache_hit_ratio"
PREEMPTIONS_TOTAL = "autoglm_preemptions_total"
# The model-server protocol of the Gateway API Inference Extension (what an endpoint picker scores
# on): requests waiting are QUEUE_DEPTH; these are the running requests, the KV-cache usage and the
# pool's shape. The operator's EndpointPickerConfig names them (autoglm_operator.routing).
RUNNING_REQUESTS = "autoglm_running_requests"
KV_CACHE_USAGE = "autoglm_kv_cache_usage_ratio"
KV_CACHE_CONFIG_INFO = "autoglm_kv_cache_config_info"
KV_CACHE_BLOCK_SIZE_LABEL = "block_size"
KV_CACHE_NUM_BLOCKS_LABEL = "num_blocks"

# The names as they appear in /metrics (counters gain ``_total``; histograms ``_bucket/_sum/_count``).
METRIC_NAMES: tuple[str, ...] = (
    REQUESTS_TOTAL,
    REQUEST_DURATION,
    TIME_TO_FIRST_TOKEN,
    GENERATED_TOKENS_TOTAL,
    PROMPT_TOKENS_TOTAL,
    BATCH_SIZE,
    QUEUE_DEPTH,
    INFLIGHT_REQUESTS,
    MODEL_LOAD_SECONDS,
    MODEL_MEMORY_BYTES,
    GPU_MEMORY_ALLOCATED,
    MODEL_READY,
    CIRCUIT_BREAKER_OPEN,
    GENERATION_FAILURES_TOTAL,
    KV_CACHE_BLOCKS,
    PREFIX_CACHE_QUERIED_TOKENS,
    PREFIX_CACHE_HIT_TOKENS,
    PREFIX_CACHE_HIT_RATIO,
    PREEMPTIONS_TOTAL,
    RUNNING_REQUESTS,
    KV_CACHE_USAGE,
    KV_CACHE_CONFIG_INFO,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _GpuMemoryCollector(Collector):
    """Reads allocator stats at scrape time; yields nothing on a machine without CUDA."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            GPU_MEMORY_ALLOCATED, "Bytes held by tensors on each visible GPU.", labels=["device"]
        )
        for device, value in self._read().items():
            family.add_metric([device], value)
        yield family


class _KvCacheCollector(Collector):
    """The engine's KV pool and prefix cache, read from ``engine.stats()`` at scrape time."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._engine.stats()
        blocks = GaugeMetricFamily(
            KV_CACHE_BLOCKS,
            "KV-cache blocks by state: used (held by running requests), cached (free, holding a "
            "reusable prefix), free.",
            labels=["state"],
        )
        blocks.add_metric(["used"], s.kv_blocks_used)
        blocks.add_metric(["cached"], s.kv_blocks_cached)
        blocks.add_metric(["free"], max(0, s.kv_blocks_total - s.kv_blocks_used - s.kv_blocks_cached))
        yield blocks
        yield CounterMetricFamily(
            PREFIX_CACHE_QUERIED_TOKENS.removesuffix("_total"),
            "Prompt tokens looked up in the prefix cache at admission.",
            value=s.prefix_query_tokens,
        )
        yield CounterMetricFamily(
            PREFIX_CACHE_HIT_TOKENS.removesuffix("_total"),
            "Prompt tokens whose KV was reused from the prefix cache instead of computed.",
            value=s.prefix_hit_tokens,
        )
        yield GaugeMetricFamily(
            PREFIX_CACHE_HIT_RATIO,
            "Share of looked-up prompt tokens found in the prefix cache since start.",
            value=s.prefix_hit_tokens / s.prefix_query_tokens if s.prefix_query_tokens else 0.0,
        )
        yield CounterMetricFamily(
            PREEMPTIONS_TOTAL.removesuffix("_total"),
            "Running requests that gave their KV blocks back for lack of room and were recomputed.",
            value=s.preemptions,
        )
        # Cached blocks count as free (a new request may evict them), as in vLLM's kv_cache_usage_perc.
        yield GaugeMetricFamily(
            KV_CACHE_USAGE,
            "Share of the KV-cache pool's blocks held by running requests (0..1).",
            value=s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0,
        )
        if s.kv_blocks_total:  # the pool is sized once the model is loaded
            info = GaugeMetricFamily(
                KV_CACHE_CONFIG_INFO,
                "The KV-cache pool's shape as labels: tokens per block and number of blocks (value 1).",
                labels=[KV_CACHE_BLOCK_SIZE_LABEL, KV_CACHE_NUM_BLOCKS_LABEL],
            )
            info.add_metric([str(s.kv_block_size), str(s.kv_blocks_total)], 1.0)
            yield info


class RuntimeMetrics:
    """The runtime's metrics in a private registry; the app and the engine report into it."""

    def __init__(self, gpu_reader: Callable[[], dict[str, int]] = gpu_memory_allocated) -> None:
        r = self.registry = CollectorRegistry()
        # prometheus-client appends ``_total`` to counters itself.
        self.requests = Counter(
            REQUESTS_TOTAL.removesuffix("_total"),
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            REQUEST_DURATION,
            "Time from request to last byte, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            TIME_TO_FIRST_TOKEN,
            "Time from admission to the first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            GENERATED_TOKENS_TOTAL.removesuffix("_total"), "Tokens generated.", registry=r
        )
        self.prompt_tokens = Counter(
            PROMPT_TOKENS_TOTAL.removesuffix("_total"), "Prompt tokens processed.", registry=r
        )
        self.batch_size = Histogram(
            BATCH_SIZE, "Requests decoded together in one model step.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(QUEUE_DEPTH, "Requests waiting for a batch slot.", registry=r)
        self.inflight = Gauge(INFLIGHT_REQUESTS, "Requests admitted and not finished.", registry=r)
        self.running = Gauge(
            RUNNING_REQUESTS, "Requests in the running batch (being prefilled or decoded).", registry=r
        )
        self.model_load_seconds = Gauge(
            MODEL_LOAD_SECONDS, "Seconds the model took to load and warm up.", registry=r
        )
        self.model_memory_bytes = Gauge(
            MODEL_MEMORY_BYTES, "Memory footprint of the model's weights.", registry=r
        )
        self.model_ready = Gauge(MODEL_READY, "1 when the model is loaded and warm.", registry=r)
        self.circuit_breaker_open = Gauge(
            CIRCUIT_BREAKER_OPEN,
            "1 while the circuit breaker sheds load because the model keeps failing.",
            registry=r,
        )
        self.generation_failures = Counter(
            GENERATION_FAILURES_TOTAL.removesuffix("_total"),
            "Model steps that raised, by kind (oom or error); their rows are retried in smaller batches.",
            ["kind"],
            registry=r,
        )
        for kind in ("oom", "error"):  # export zeros, so rate() and alerts see the series from the start
            self.generation_failures.labels(kind=kind)
        r.register(_GpuMemoryCollector(gpu_reader))

    def bind_engine(self, engine: Any) -> None:
        """Read queue depth and in-flight requests from the engine at scrape time."""
        self.queue_depth.set_function(lambda: engine.stats().queue_depth)
        self.inflight.set_function(lambda: engine.stats().inflight)
        self.running.set_function(lambda: engine.stats().running)
        self.model_ready.set_function(lambda: 1.0 if engine.ready else 0.0)
        engine.batch_observers.append(self.batch_size.observe)
        self.registry.register(_KvCacheCollector(engine))
        breaker = getattr(engine, "breaker", None)
        if breaker is not None:
            self.circuit_breaker_open.set_function(lambda: 1.0 if breaker.is_open else 0.0)
        if hasattr(engine, "failure_observers"):
            engine.failure_observers.append(self.record_failure)

    def record_failure(self, exc: BaseException) -> None:
        kind = (
            "oom"
            if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
            else "error"
        )
        self.generation_failures.labels(kind=kind).inc()

    def model_loaded(self, load_seconds: float, memory_bytes: int) -> None:
        self.model_load_seconds.set(load_seconds)
        self.model_memory_bytes.set(memory_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
