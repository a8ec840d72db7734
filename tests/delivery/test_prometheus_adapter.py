"""deploy/prometheus-adapter/values.yaml: prometheus-adapter's rules for the HPA's per-pod metrics.

Every series the rules name must be a gauge in what the runtime serves on /metrics (its real
registry, rendered the way the endpoint renders it), every metric the operator's HPAs ask the custom
metrics API for must be one the rules expose, and every query must be valid PromQL — the KEDA
trigger's query too."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from autoglm_operator.autoscaling import POD_METRICS, pod_query
from tests.conftest import REPO

promql_parser = pytest.importorskip("promql_parser")

VALUES = yaml.safe_load((REPO / "deploy/prometheus-adapter/values.yaml").read_text())
RULES: list[dict[str, Any]] = VALUES["rules"]["custom"]


def served_families() -> dict[str, str]:
    """name → type of every family in the text a runtime's /metrics serves."""
    from autoglm_runtime.metrics import RuntimeMetrics

    text = RuntimeMetrics(gpu_reader=dict).render().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def series_of(rule: dict[str, Any]) -> str:
    match = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"])
    assert match, rule["seriesQuery"]
    return match.group(1)


def test_rules_name_only_gauges_the_runtime_serves() -> None:
    served = served_families()
    assert RULES, "no rules"
    for rule in RULES:
        name = series_of(rule)
        assert served.get(name) == "gauge", f"{name}: the runtime serves {served.get(name)!r}, not a gauge"


def test_every_hpa_metric_is_exposed_by_a_rule() -> None:
    exposed = {rule["name"]["as"] for rule in RULES}
    assert set(POD_METRICS.values()) <= exposed
    for rule in RULES:
        assert re.fullmatch(rule["name"]["matches"], series_of(rule)), rule["name"]


def test_rules_map_series_to_pods() -> None:
    for rule in RULES:
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert 'namespace!=""' in rule["seriesQuery"]
        assert 'pod!=""' in rule["seriesQuery"]


def test_queries_are_valid_promql() -> None:
    for rule in RULES:
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series_of(rule))
            .replace("<<.LabelMatchers>>", 'namespace="ml",pod=~"a|b"')
            .replace("<<.GroupBy>>", "pod")
        )
        promql_parser.parse(query)
        promql_parser.parse(rule["seriesQuery"])
    for metric in POD_METRICS.values():
        promql_parser.parse(pod_query(metric, "ml", "glm"))


def test_rule_checks_can_fail() -> None:
    """Guards the checks above: a series the runtime does not serve is caught."""
    assert "autoglm_requests_total" not in served_families()  # a counter family is served without _total
    assert served_families().get("autoglm_requests") == "counter"
