"""The autoscaler of one AutoGLMDeployment: what is rendered (HPA or KEDA ScaledObject) and how its
own conditions become the CR's ``Autoscaling`` condition.

Two engines ride on what users already run:

* ``hpa`` — an ``autoscaling/v2`` HPA. ``inflight-requests`` and ``queue-depth`` are the runtime's
  per-pod gauges, read through the custom metrics API (``custom.metrics.k8s.io``), which a metrics
  adapter serves: ``deploy/prometheus-adapter/values.yaml`` holds prometheus-adapter's rules for
  them. ``cpu`` is read from metrics-server (``metrics.k8s.io``).
* ``keda`` — a ``keda.sh/v1alpha1`` ScaledObject with a Prometheus trigger on the same per-pod
  signal (KEDA then creates and owns the HPA); ``cpu`` becomes KEDA's cpu trigger.

An autoscaler that cannot read its metric never adds a replica, and says so only in its own status:
the HPA controller sets ``ScalingActive=False`` (``FailedGetPodsMetric`` when no adapter serves the
metric, ``FailedGetResourceMetric`` without metrics-server), KEDA sets ``Ready=False``. The CR's
``Autoscaling`` condition follows those, with a message that names the fix. ``Ready`` stays about
serving: a broken autoscaler is not an outage, so it does not make the CR ``Degraded``; it shows in
the ``AUTOSCALING`` printer column and in the Argo CD health message.

No scale to zero: a 9B model loads for minutes, and nothing would hold the first request meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoglm_operator.api import AutoGLMDeploymentSpec, AutoscalingEngine, AutoscalingMetric, ConditionType
from autoglm_operator.memory.types import MemoryPlan

# Per-pod gauges the runtime exports (autoglm_runtime.metrics), by the metric the spec names.
POD_METRICS = {
    AutoscalingMetric.INFLIGHT: "autoglm_inflight_requests",
    AutoscalingMetric.QUEUE: "autoglm_queue_depth",
}
# kube-prometheus-stack's Prometheus Service; the chart sets the operator's --prometheus-address.
DEFAULT_PROMETHEUS_ADDRESS = "http://prometheus-operated.monitoring.svc:9090"
DEFAULT_CPU_TARGET = 70
KEDA_POLLING_SECONDS = 15

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"
CONDITION = ConditionType.AUTOSCALING.value


def replica_capacity(spec: AutoGLMDeploymentSpec, plan: MemoryPlan | None) -> int:
    """Requests one replica serves at once: the engine's batch size, or fewer when the KV-cache pool
    holds fewer full-length requests (the estimate's ``concurrent_full_requests``)."""
    capacity = spec.serving.max_batch_size
    full = plan.chosen.concurrent_full_requests if plan is not None and plan.gpu_known else None
    if full:
        capacity = min(capacity, full)
    return max(1, capacity)


def target(spec: AutoGLMDeploymentSpec, plan: MemoryPlan | None) -> int:
    """The per-pod target: the spec's, else what one replica holds (half of it for the queue)."""
    assert spec.autoscaling is not None
    if spec.autoscaling.target is not None:
        return spec.autoscaling.target
    if spec.autoscaling.metric is AutoscalingMetric.CPU:
        return DEFAULT_CPU_TARGET
    capacity = replica_capacity(spec, plan)
    return capacity if spec.autoscaling.metric is AutoscalingMetric.INFLIGHT else max(1, capacity // 2)


def pod_query(metric: str, namespace: str, deployment: str) -> str:
    """PromQL summing a per-pod gauge over exactly this Deployment's pods (``NAME-<rs>-<pod>``: the
    fully anchored regex cannot match another Deployment's pods)."""
    return f'sum({metric}{{namespace="{namespace}",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"}})'


def context(
    spec: AutoGLMDeploymentSpec,
    plan: MemoryPlan | None,
    *,
    name: str,
    namespace: str,
    prometheus_address: str,
) -> dict[str, Any]:
    """Template values of ``hpa.yaml.j2`` / ``scaledobject.yaml.j2``."""
    a = spec.autoscaling
    assert a is not None
    metric = POD_METRICS.get(a.metric)
    return {
        "engine": a.engine.value,
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "metric": a.metric.value,
        "pods_metric": metric,
        "target": target(spec, plan),
        "scale_up_window": a.behavior.scale_up_stabilization_seconds,
        "scale_down_window": a.behavior.scale_down_stabilization_seconds,
        "prometheus_address": a.prometheus_address or prometheus_address,
        "query": pod_query(metric, namespace, name) if metric else None,
        "polling_seconds": KEDA_POLLING_SECONDS,
    }


def template(spec: AutoGLMDeploymentSpec) -> str:
    assert spec.autoscaling is not None
    return "scaledobject.yaml.j2" if spec.autoscaling.engine is AutoscalingEngine.KEDA else "hpa.yaml.j2"


# -- the autoscaler's own state ------------------------------------------------------------------


@dataclass(frozen=True)
class AutoscalerState:
    """What the operator keeps of a live HPA or ScaledObject: its kind and its conditions."""

    kind: str
    conditions: tuple[tuple[str, str, str, str], ...]  # (type, status, reason, message)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> AutoscalerState:
        conds = ((obj.get("status") or {}).get("conditions")) or []
        return cls(
            kind=str(obj.get("kind", "")),
            conditions=tuple(
                (
                    str(c.get("type", "")),
                    str(c.get("status", "")),
                    str(c.get("reason", "") or ""),
                    str(c.get("message", "") or ""),
                )
                for c in conds
            ),
        )

    def get(self, type_: str) -> tuple[str, str, str] | None:
        for t, status, reason, message in self.conditions:
            if t == type_:
                return status, reason, message
        return None


@dataclass(frozen=True)
class AutoscalingView:
    """The CR's autoscaler as reconcile saw it (an input of the status)."""

    engine: AutoscalingEngine
    metric: AutoscalingMetric
    state: AutoscalerState | None  # None: not created (yet), or its CRD is missing
    crd_missing: bool = False


def fix_hint(engine: AutoscalingEngine, metric: AutoscalingMetric) -> str:
    """What to do when the autoscaler cannot read its metric."""
    if engine is AutoscalingEngine.KEDA:
        return (
            "Check that KEDA runs and reaches the Prometheus server at spec.autoscaling.prometheusAddress "
            "(default: the operator's --prometheus-address) and that Prometheus scrapes the pods "
            "(spec.monitoring.serviceMonitor); or set spec.autoscaling.engine: hpa."
        )
    if metric is AutoscalingMetric.CPU:
        return (
            "metric cpu needs the resource metrics API (metrics.k8s.io): install metrics-server; "
            "or set spec.autoscaling.engine: keda."
        )
    return (
        f"metric {metric.value} is read from the custom metrics API (custom.metrics.k8s.io): install "
        "prometheus-adapter with the rules in deploy/prometheus-adapter/values.yaml (docs/install.md, "
        "'Autoscaling'); or set spec.autoscaling.engine: keda, or metric: cpu with metrics-server."
    )


def condition(view: AutoscalingView) -> dict[str, str]:
    """The CR's ``Autoscaling`` condition (type, status, reason, message)."""

    def cond(status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": CONDITION, "status": status, "reason": reason, "message": message}

    hint = fix_hint(view.engine, view.metric)
    if view.engine is AutoscalingEngine.KEDA:
        if view.crd_missing:
            return cond(
                FALSE,
                "KedaNotInstalled",
                "The ScaledObject CRD (keda.sh/v1alpha1) is not installed: install KEDA, "
                "or set spec.autoscaling.engine: hpa.",
            )
        if view.state is None:
            return cond(UNKNOWN, "Pending", "The ScaledObject does not exist yet.")
        ready = view.state.get("Ready")
        if ready is None or ready[0] == UNKNOWN:
            return cond(UNKNOWN, "Pending", "Waiting for KEDA to evaluate the ScaledObject (is KEDA running?).")
        if ready[0] != TRUE:
            return cond(FALSE, ready[1] or "ScaledObjectNotReady", f"KEDA: {ready[2]} {hint}".strip())
        active = view.state.get("Active")
        activity = "active" if active and active[0] == TRUE else "ready, not active (at minReplicas)"
        return cond(TRUE, "ScaledObjectReady", f"KEDA's ScaledObject is {activity}.")

    if view.state is None:
        return cond(UNKNOWN, "Pending", "The HorizontalPodAutoscaler does not exist yet.")
    able = view.state.get("AbleToScale")
    active = view.state.get("ScalingActive")
    if able is not None and able[0] == FALSE:
        return cond(FALSE, able[1] or "NotAbleToScale", f"HPA: {able[2]}".strip())
    if active is not None and active[0] == FALSE:
        return cond(FALSE, active[1] or "ScalingInactive", f"HPA: {active[2]} {hint}".strip())
    if active is None or active[0] != TRUE:
        # Seen on a real server: the first status carries AbleToScale alone, before any metric was read.
        return cond(UNKNOWN, "Pending", "Waiting for the HPA controller to read the metric.")
    limited = view.state.get("ScalingLimited")
    detail = f" ({limited[2]})" if limited and limited[0] == TRUE and limited[2] else ""
    return cond(TRUE, "ScalingActive", f"The HPA reads its metric and scales{detail}.")
