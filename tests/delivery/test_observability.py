"""The Grafana dashboard and the Prometheus alert rules: well formed, every query valid PromQL, and
every ``autoglm_*`` metric they query exported by the code (read from the real metric registries of
``autoglm_runtime.metrics`` and ``autoglm_operator.metrics``, not from a copied list)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from tests.conftest import REPO

promql_parser = pytest.importorskip("promql_parser")

DASHBOARD = json.loads((REPO / "deploy/grafana/autoglm-dashboard.json").read_text())
RULES = yaml.safe_load((REPO / "deploy/prometheus/autoglm-rules.yaml").read_text())

# Metrics the dashboard or alerts use that the code does not export yet, each with who owes it.
# xfail(strict): the test turns red the day the metric lands, so this list cannot go stale.
PENDING: dict[str, str] = {}

# Sample names each metric type exposes (prometheus-client text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_sample_names() -> set[str]:
    from autoglm_operator import metrics as operator_metrics
    from autoglm_runtime import metrics as runtime_metrics

    families = []
    # The runtime keeps its metrics in a registry per app instance.
    families += list(runtime_metrics.RuntimeMetrics(gpu_reader=dict).registry.collect())
    # The operator's are module-level collectors (in the default registry).
    for value in vars(operator_metrics).values():
        private_registry = isinstance(value, CollectorRegistry) and value is not operator_metrics.REGISTRY
        if isinstance(value, MetricWrapperBase) or private_registry:
            families += list(value.collect())
    names = set()
    for family in families:
        base = family.name
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(base + suffix)
        names.update(s.name for s in family.samples)
    return {n for n in names if n.startswith("autoglm_")}


EXPORTED = exported_sample_names()


def dashboard_queries() -> Iterator[tuple[str, str]]:
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert inner, var["query"]
            yield f"variable {var['name']}", inner.group(1)


def rule_queries() -> Iterator[tuple[str, str]]:
    for group in RULES["spec"]["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def as_promql(expr: str) -> str:
    """Grafana's variables replaced the way Grafana expands them before Prometheus sees the query."""
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")


def selectors(node: Any) -> Iterator[str]:
    kind = type(node).__name__
    if kind == "VectorSelector":
        if node.name:
            yield node.name
        for m in node.matchers.matchers:
            if m.name == "__name__":
                yield m.value
        return
    for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None:
            yield from selectors(child)
    for arg in getattr(node, "args", None) or ():
        yield from selectors(arg)


ALL_QUERIES = [*dashboard_queries(), *rule_queries()]
USED = sorted({name for _, q in ALL_QUERIES for name in selectors(promql_parser.parse(as_promql(q)))})


@pytest.mark.parametrize(("where", "query"), ALL_QUERIES, ids=[w for w, _ in ALL_QUERIES])
def test_query_is_valid_promql(where: str, query: str) -> None:
    try:
        promql_parser.parse(as_promql(query))
    except Exception as e:  # the parser raises plain ValueError/RuntimeError subclasses
        pytest.fail(f"{where}: {e}")


@pytest.mark.parametrize(
    "metric",
    [
        pytest.param(
            m, marks=pytest.mark.xfail(strict=True, reason=f"not exported yet; owed by {PENDING[m]}")
        )
        if m in PENDING
        else m
        for m in USED
        if m.startswith("autoglm_")
    ],
)
def test_metric_is_exported_by_the_code(metric: str) -> None:
    assert metric in EXPORTED, f"{metric} is queried but neither runtime nor operator exports it"


def test_the_metrics_checked_are_real() -> None:
    """Guards the test above: the registries were read, and the key metrics are in the assets."""
    assert {"autoglm_requests_total", "autoglm_operator_reconciles_total"} <= EXPORTED
    assert {
        "autoglm_requests_total",
        "autoglm_request_duration_seconds_bucket",
        "autoglm_time_to_first_token_seconds_bucket",
        "autoglm_generated_tokens_total",
        "autoglm_batch_size_bucket",
        "autoglm_queue_depth",
        "autoglm_gpu_memory_allocated_bytes",
        "autoglm_operator_reconciles_total",
    } <= set(USED)


def test_dashboard_is_importable_grafana_json() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert DASHBOARD["uid"] == "autoglm-overview"
    assert DASHBOARD["title"]
    names = [v["name"] for v in DASHBOARD["templating"]["list"]]
    assert names[0] == "datasource"
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    # Panels the dashboard promises.
    titles = " ".join(p["title"] for p in DASHBOARD["panels"]).lower()
    for topic in (
        "requests",
        "latency",
        "first token",
        "tokens / s",
        "batch size",
        "queue",
        "gpu memory",
        "reconcile errors",
    ):
        assert topic in titles, topic


def test_rules_are_a_well_formed_prometheusrule() -> None:
    assert RULES["apiVersion"] == "monitoring.coreos.com/v1"
    assert RULES["kind"] == "PrometheusRule"
    alerts = [r for g in RULES["spec"]["groups"] for r in g["rules"]]
    assert len({a["alert"] for a in alerts}) == len(alerts)
    for alert in alerts:
        assert re.fullmatch(r"AutoGLM[A-Za-z]+", alert["alert"])
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"]
    names = {a["alert"] for a in alerts}
    assert {
        "AutoGLMRuntimeCrashLooping",
        "AutoGLMMemoryDoesNotFit",
        "AutoGLMHighRejectionRate",
        "AutoGLMCircuitBreakerOpen",
    } <= names


def test_memory_fit_alert_uses_a_result_the_operator_reports() -> None:
    from autoglm_operator.metrics import RESULTS

    for _, query in rule_queries():
        for result in re.findall(r'result="([a-z_]+)"', query):
            assert result in RESULTS, result
