"""Prometheus metrics of the operator (served on ``--metrics-port``).

Labels stay low-cardinality: results, verbs and kinds, never object names.
"""

from __future__ import annotations

import collections
import threading
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
    """Per-CR child counts folded into the ``managed_resources`` gauge.

    Reconciles run in several threads: the counts change under a lock, and each change updates
    the totals by its difference (constant time, not a walk over every CR)."""

    def __init__(self) -> None:
        self._by_owner: dict[tuple[str, str], collections.Counter[str]] = {}
        self._totals: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def set(self, owner: tuple[str, str], kinds: Iterable[str]) -> None:
        counts = collections.Counter(kinds)
        with self._lock:
            self._change(self._by_owner.get(owner), counts)
            self._by_owner[owner] = counts

    def forget(self, owner: tuple[str, str]) -> None:
        with self._lock:
            self._change(self._by_owner.pop(owner, None), collections.Counter())

    def totals(self) -> Mapping[str, int]:
        with self._lock:
            return {kind: n for kind, n in self._totals.items() if n}

    def _change(self, old: Mapping[str, int] | None, new: Mapping[str, int]) -> None:
        old = old or {}
        for kind in old.keys() | new.keys():
            self._totals[kind] += new.get(kind, 0) - old.get(kind, 0)
            MANAGED.labels(kind=kind).set(self._totals[kind])


MANAGED_COUNTS = ManagedCounts()


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on 0.0.0.0:port in a daemon thread (port 0 = off)."""
    if port:
        start_http_server(port, registry=registry)


def sample(name: str, labels: Mapping[str, str] | None = None) -> float:
    """Current value of one sample (tests and the CLI read metrics in-process)."""
    value = REGISTRY.get_sample_value(name, dict(labels or {}))
    return value or 0.0
