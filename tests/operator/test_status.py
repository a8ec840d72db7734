"""Status and conditions as pure functions: what `kubectl get agd` / `describe` would show."""

from __future__ import annotations

from typing import Any

import pytest

from autoglm_operator import render
from autoglm_operator.status import (
    Observation,
    compute_status,
    desired_conditions,
    endpoint_url,
    rollout_of,
    status_patch,
    transition_notices,
)

CR: dict[str, Any] = {
    "apiVersion": "autoglm.io/v1alpha1",
    "kind": "AutoGLMDeployment",
    "metadata": {"name": "chat", "namespace": "ml", "uid": "u1", "generation": 3},
    "spec": {
        "model": {"source": "hf://THUDM/glm-4-9b-chat"},
        "quantization": "int8",
        "resources": {"gpu": {"count": 1, "product": "L4"}},
    },
}


def _plan(**spec_changes: Any) -> Any:
    cr = {**CR, "spec": {**CR["spec"], **spec_changes}}
    return render.render(cr).plan


def _deployment(*, desired: int = 2, ready: int = 0, updated: int | None = None, observed: int = 7) -> dict:
    return {
        "metadata": {"generation": 7},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed,
            "replicas": desired,
            "updatedReplicas": desired if updated is None else updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def _conds(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_rolling_out_then_ready() -> None:
    plan = _plan()
    obs = Observation(
        generation=3, plan=plan, deployment=_deployment(ready=1), selector="a=b", endpoint="http://x"
    )
    first = compute_status(obs, None, now="2026-01-01T00:00:00Z")
    assert _conds(first) == {
        "Ready": ("False", "ReplicasNotReady"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
        "MemoryFit": ("True", "Fits"),
    }
    assert first["replicas"] == 2
    assert first["readyReplicas"] == 1
    assert first["quantization"] == "int8"
    assert first["estimatedGpuMemory"] == plan.estimated_gpu_memory
    assert first["estimate"]["fits"] is True
    assert first["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in first["conditions"])

    ready = compute_status(
        Observation(
            generation=3, plan=plan, deployment=_deployment(ready=2), selector="a=b", endpoint="http://x"
        ),
        first,
        now="2026-01-01T00:05:00Z",
    )
    times = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    assert _conds(ready)["Ready"] == ("True", "ReplicasReady")
    assert times["Ready"] == "2026-01-01T00:05:00Z"  # status changed
    assert times["MemoryFit"] == "2026-01-01T00:00:00Z"  # status kept: time kept
    assert times["Degraded"] == "2026-01-01T00:00:00Z"
    notices = transition_notices(first, ready)
    assert [(n.type, n.reason) for n in notices] == [("Normal", "Ready")]


def test_same_observation_gives_no_patch() -> None:
    obs = Observation(
        generation=3, plan=_plan(), deployment=_deployment(ready=2), selector="a=b", endpoint="http://x"
    )
    first = compute_status(obs, None, now="2026-01-01T00:00:00Z")
    again = compute_status(obs, first, now="2026-02-02T00:00:00Z")
    assert again == first
    assert status_patch(first, again) is None
    assert transition_notices(first, again) == []


def test_old_pods_or_unobserved_generation_are_not_ready() -> None:
    assert not rollout_of(_deployment(ready=2, updated=1)).complete  # old template pods remain
    assert not rollout_of(_deployment(ready=2, observed=6)).complete  # controller has not seen the spec
    assert rollout_of(_deployment(ready=2)).complete
    assert rollout_of({"metadata": {"generation": 1}, "spec": {}, "status": {}}).desired == 1  # API default


def test_failed_rollout_is_degraded() -> None:
    dep = _deployment(ready=0)
    dep["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "too slow",
        }
    ]
    conds = desired_conditions(Observation(generation=1, plan=_plan(), deployment=dep))
    degraded = next(c for c in conds if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "RolloutFailed"
    assert "ProgressDeadlineExceeded" in degraded["message"]


def test_invalid_spec_names_the_field_and_keeps_estimates_out() -> None:
    obs = Observation(generation=2, spec_error="spec.autoscaling.minReplicas: must be <= maxReplicas")
    status = compute_status(obs, None, now="2026-01-01T00:00:00Z")
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Degraded"]["status"] == "True"
    assert "spec.autoscaling.minReplicas" in conds["Degraded"]["message"]
    assert conds["MemoryFit"]["status"] == "Unknown"
    assert set(status) == {"conditions", "observedGeneration"}
    notices = transition_notices(None, status)
    assert [(n.type, n.reason) for n in notices] == [("Warning", "InvalidSpec")]
    # Same error again (a resync): no new Event.
    assert transition_notices(status, compute_status(obs, status)) == []


def test_memory_does_not_fit_carries_numbers_and_no_endpoint() -> None:
    cr = {
        **CR,
        "spec": {**CR["spec"], "quantization": "bf16", "resources": {"gpu": {"count": 1, "product": "T4"}}},
    }
    rendered = render.render(cr)
    assert rendered.deployment_skipped_reason
    obs = Observation(
        generation=1,
        plan=rendered.plan,
        deployment_skipped_reason=rendered.deployment_skipped_reason,
        selector="a=b",
        endpoint="http://chat.ml.svc:8000/v1",
    )
    status = compute_status(obs, None)
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["MemoryFit"]["status"] == "False"
    assert conds["MemoryFit"]["reason"] == "DoesNotFit"
    assert "Gi" in conds["MemoryFit"]["message"]
    assert conds["Degraded"]["reason"] == "InsufficientGpuMemory"
    assert status["replicas"] == 0
    assert "endpoint" not in status
    reasons = [n.reason for n in transition_notices(None, status)]
    assert "MemoryDoesNotFit" in reasons


def test_status_patch_nulls_dropped_keys() -> None:
    assert status_patch({"endpoint": "x", "conditions": []}, {"conditions": []}) == {
        "conditions": [],
        "endpoint": None,
    }


@pytest.mark.parametrize(
    ("tls", "url"), [(False, "http://chat.ml.svc:8000/v1"), (True, "https://chat.ml.svc:8000/v1")]
)
def test_endpoint(tls: bool, url: str) -> None:
    assert endpoint_url("chat", "ml", 8000, tls=tls) == url


def test_recovery_is_announced() -> None:
    bad = compute_status(Observation(generation=1, spec_error="spec.x: bad"), None)
    good = compute_status(Observation(generation=2, plan=_plan(), deployment=_deployment(ready=2)), bad)
    assert ("Normal", "Recovered") in [(n.type, n.reason) for n in transition_notices(bad, good)]


# -- Autoscaling ------------------------------------------------------------------------------

def _view(engine: str, metric: str, conditions: list[dict[str, str]] | None, **kw: Any) -> Any:
    from autoglm_operator import autoscaling
    from autoglm_operator.api import AutoscalingEngine, AutoscalingMetric

    state = None
    if conditions is not None:
        state = autoscaling.AutoscalerState.of(
            {"kind": "ScaledObject" if engine == "keda" else "HorizontalPodAutoscaler",
             "status": {"conditions": conditions}}
        )
    return autoscaling.AutoscalingView(AutoscalingEngine(engine), AutoscalingMetric(metric), state, **kw)


def _c(type_: str, status: str, reason: str = "R", message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("engine", "metric", "conditions", "kw", "expected"),
    [
        ("hpa", "inflight-requests", None, {}, ("Unknown", "Pending", "does not exist")),
        ("hpa", "inflight-requests", [], {}, ("Unknown", "Pending", "HPA controller")),
        ("hpa", "inflight-requests", [_c("AbleToScale", "True")], {}, ("Unknown", "Pending", "read the metric")),
        (
            "hpa", "inflight-requests",
            [_c("AbleToScale", "True"), _c("ScalingActive", "False", "FailedGetPodsMetric", "no custom metrics API")],
            {}, ("False", "FailedGetPodsMetric", "deploy/prometheus-adapter/values.yaml"),
        ),
        (
            "hpa", "cpu",
            [_c("AbleToScale", "True"), _c("ScalingActive", "False", "FailedGetResourceMetric", "no metrics")],
            {}, ("False", "FailedGetResourceMetric", "metrics-server"),
        ),
        (
            "hpa", "queue-depth",
            [_c("AbleToScale", "False", "FailedGetScale", "no scale")], {}, ("False", "FailedGetScale", "no scale"),
        ),
        (
            "hpa", "inflight-requests",
            [_c("AbleToScale", "True"), _c("ScalingActive", "True", "ValidMetricFound"),
             _c("ScalingLimited", "True", "TooFewReplicas", "the desired replica count is less than the minimum")],
            {}, ("True", "ScalingActive", "less than the minimum"),
        ),
        ("keda", "inflight-requests", None, {"crd_missing": True}, ("False", "KedaNotInstalled", "install KEDA")),
        ("keda", "inflight-requests", [], {}, ("Unknown", "Pending", "KEDA")),
        (
            "keda", "inflight-requests", [_c("Ready", "False", "KEDAScalerFailed", "prometheus unreachable")],
            {}, ("False", "KEDAScalerFailed", "prometheusAddress"),
        ),
        (
            "keda", "inflight-requests", [_c("Ready", "True", "ScaledObjectReady"), _c("Active", "True")],
            {}, ("True", "ScaledObjectReady", "active"),
        ),
    ],
)
def test_autoscaling_condition_follows_the_autoscaler(
    engine: str, metric: str, conditions: Any, kw: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    from autoglm_operator import autoscaling

    cond = autoscaling.condition(_view(engine, metric, conditions, **kw))
    assert cond["type"] == "Autoscaling"
    assert (cond["status"], cond["reason"]) == expected[:2], cond
    assert expected[2] in cond["message"], cond


def test_autoscaling_transitions_post_one_event_each_way() -> None:
    def status(s: str, reason: str) -> dict[str, Any]:
        return {"conditions": [_c("Autoscaling", s, reason, f"{reason} message")]}

    pending = status("Unknown", "Pending")
    broken = status("False", "FailedGetPodsMetric")
    fixed = status("True", "ScalingActive")
    down = transition_notices(pending, broken)
    assert [(n.type, n.reason) for n in down] == [("Warning", "AutoscalingInactive")]
    assert "FailedGetPodsMetric" in down[0].message
    assert transition_notices(broken, status("False", "FailedGetPodsMetric")) == []
    assert transition_notices(broken, {"conditions": [_c("Autoscaling", "False", "Other", "x")]}) == []
    assert [(n.type, n.reason) for n in transition_notices(broken, fixed)] == [("Normal", "AutoscalingActive")]
    assert transition_notices(pending, fixed) == []
