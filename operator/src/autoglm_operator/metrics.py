"""Prometheus metrics of the operator (served on ``--metrics-port``).

Labels stay low-cardinality: results, verbs and kinds, never object names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RESULTS = ("applied", "unchanged", "invalid", "memory_does_not_fit", "retrying", "failed")

RECONCILES = Counter(
    "autoglm_operator_reconciles_total",
    "Reconciles of AutoGLMDeployments by result: applied (wrote children), unchanged (no write), "
    "invalid (spec rejected), memory_does_not_fit, retrying (transient API error), failed.",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "autoglm_operator_reconcile_duration_seconds",
    "Wall time of one reconcile, API calls included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MANAGED = Gauge(
    "autoglm_operator_managed_resources",
    "Child objects the operator currently manages, by kind.",
    ["kind"],
)
API_WRITES = Counter(
    "autoglm_operator_api_writes_total",
    "Write requests the operator sent to the API server, by verb (apply, delete, patch_status) and kind.",
    ["verb", "kind"],
)

API_REQUESTS = Counter(
    "autoglm_operator_api_requests_total",
    "Every request the operator's own client sent to the API server (kopf's watches aside), by verb "
    "(GET, LIST, PATCH, POST, DELETE) and resource: an idle resync adds none.",
    ["verb", "resource"],
)

for _result in RESULTS:  # export zeros so rate() works from the first scrape
    RECONCILES.labels(result=_result)


class ManagedCounts:
    """Per-CR child counts folded into the ``managed_resources`` gauge."""

    def __init__(self) -> None:
        self._by_owner: dict[tuple[str, str], dict[str, int]] = {}

    def set(self, owner: tuple[str, str], kinds: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
        self._by_owner[owner] = counts
        self._publish()

    def forget(self, owner: tuple[str, str]) -> None:
        self._by_owner.pop(owner, None)
        self._publish()

    def totals(self) -> Mapping[str, int]:
        totals: dict[str, int] = {}
        for counts in self._by_owner.values():
            for kind, n in counts.items():
                totals[kind] = totals.get(kind, 0) + n
        return totals

    def _publish(self) -> None:
        totals = self.totals()
        for labels in list(MANAGED._metrics):  # kinds that dropped to zero
            if labels[0] not in totals:
                MANAGED.labels(kind=labels[0]).set(0)
        for kind, n in totals.items():
            MANAGED.labels(kind=kind).set(n)


MANAGED_COUNTS = ManagedCounts()


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on 0.0.0.0:port in a daemon thread (port 0 = off)."""
    if port:
        start_http_server(port, registry=registry)


def sample(name: str, labels: Mapping[str, str] | None = None) -> float:
    """Current value of one sample (tests and the CLI read metrics in-process)."""
    value = REGISTRY.get_sample_value(name, dict(labels or {}))
    return value or 0.0
