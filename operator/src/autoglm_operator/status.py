"""The CR's status as a pure function of what the operator saw: spec error, memory plan, Deployment.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` moves only when a condition's
``status`` changes, so recomputing the status of an unchanged world gives the same dict and the
operator writes nothing (see :func:`status_patch`).

Condition meanings:

- ``Ready``: the Deployment has rolled out the current pod template and every desired replica is ready.
- ``Progressing``: a rollout is under way (pods being created, loading the model, or old pods leaving).
- ``Degraded``: the operator cannot deliver the spec: invalid spec, the model does not fit,
  an API error it will not retry, or the Deployment reports a failed rollout.
- ``Autoscaling`` (only with autoscaling on): the autoscaler can read its metric and scale, after
  the HPA's ``AbleToScale``/``ScalingActive`` or the KEDA ScaledObject's ``Ready``
  (:mod:`autoglm_operator.autoscaling`); not part of ``Degraded``: a broken autoscaler is not an outage.
- ``MemoryFit``: the memory estimate of the chosen quantization fits the GPU budget (``Unknown``,
  reason ``GpuUnknown``, when an explicit quantization runs on a GPU neither the spec nor a node
  label describes: pods are created, the message says how to get a fit check).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from autoglm_operator import autoscaling
from autoglm_operator.api import ConditionType
from autoglm_operator.memory.types import GIB, MemoryPlan

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from (gathered by reconcile)."""

    generation: int | None
    spec_error: str | None = None  # "spec.field: message" when the spec is invalid
    plan: MemoryPlan | None = None
    skip_fit_check: bool = False
    deployment_skipped_reason: str | None = None  # set when no Deployment is wanted (memory)
    deployment: Mapping[str, Any] | None = None  # the live Deployment, when there is one
    selector: str | None = None
    endpoint: str | None = None
    apply_error: str | None = None  # a non-retryable API error while applying children
    warnings: Sequence[str] = field(default_factory=tuple)  # e.g. ServiceMonitor CRD missing
    autoscaling: autoscaling.AutoscalingView | None = None  # None: no autoscaler wanted


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def quantity_gib(n_bytes: int | float) -> str:
    """Bytes as a Kubernetes-style quantity with one decimal, e.g. ``10.2Gi``."""
    return f"{n_bytes / GIB:.1f}Gi"


def estimate_status(plan: MemoryPlan) -> dict[str, Any]:
    """``status.estimate``: the chosen mode's breakdown (the planner's own rounding)."""
    return plan.to_status().model_dump(by_alias=True, mode="json")


def endpoint_url(service_name: str, namespace: str, port: int, *, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://{service_name}.{namespace}.svc:{port}/v1"


# -- Deployment readiness ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    desired: int
    replicas: int
    updated: int
    ready: int
    available: int
    observed: bool  # the Deployment controller has seen the current Deployment generation
    failed_reason: str | None  # ProgressDeadlineExceeded / ReplicaFailure message

    @property
    def complete(self) -> bool:
        return (
            self.observed
            and self.updated >= self.desired
            and self.ready >= self.desired
            and (
                self.replicas <= self.updated  # old pods are gone
            )
        )


def rollout_of(deployment: Mapping[str, Any]) -> Rollout:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation")
    observed_gen = status.get("observedGeneration")
    failed = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == FALSE:
            failed = f"{cond.get('reason', 'RolloutFailed')}: {cond.get('message', '')}".strip(": ")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == TRUE:
            failed = f"{cond.get('reason', 'ReplicaFailure')}: {cond.get('message', '')}".strip(": ")
    return Rollout(
        desired=int(spec.get("replicas", 1)),  # the API server defaults a missing replicas to 1
        replicas=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        observed=generation is None or (observed_gen is not None and observed_gen >= generation),
        failed_reason=failed,
    )


# -- conditions -------------------------------------------------------------------------------


def _cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def desired_conditions(obs: Observation) -> list[dict[str, Any]]:
    """Conditions without times: type, status, reason, message (in a fixed order)."""
    ready, progressing, degraded, memory = (
        ConditionType.READY.value,
        ConditionType.PROGRESSING.value,
        ConditionType.DEGRADED.value,
        ConditionType.MEMORY_FIT.value,
    )
    if obs.spec_error:
        msg = f"Invalid spec: {obs.spec_error}"
        return [
            _cond(ready, FALSE, "InvalidSpec", msg),
            _cond(progressing, FALSE, "InvalidSpec", "Nothing is rolled out until the spec is fixed."),
            _cond(degraded, TRUE, "InvalidSpec", msg),
            _cond(memory, UNKNOWN, "InvalidSpec", "Not estimated: the spec is invalid."),
        ]

    conds: list[dict[str, Any]] = []
    plan = obs.plan
    if plan is None:
        memory_cond = _cond(memory, UNKNOWN, "NotEstimated", "No memory estimate.")
    elif not plan.gpu_known:
        memory_cond = _cond(memory, UNKNOWN, "GpuUnknown", plan.reason)
    elif plan.fits:
        memory_cond = _cond(memory, TRUE, "Fits", plan.reason or "The estimate fits the GPU budget.")
    elif obs.skip_fit_check:
        memory_cond = _cond(
            memory, FALSE, "DoesNotFitCheckSkipped", _nofit_message(plan) + " Pods may run out of memory."
        )
    else:
        memory_cond = _cond(memory, FALSE, "DoesNotFit", _nofit_message(plan))

    if obs.deployment_skipped_reason:
        msg = f"No pods are created: {obs.deployment_skipped_reason}"
        conds += [
            _cond(ready, FALSE, "InsufficientGpuMemory", msg),
            _cond(progressing, FALSE, "InsufficientGpuMemory", msg),
            _cond(degraded, TRUE, "InsufficientGpuMemory", msg),
        ]
        return [*conds, memory_cond]

    dep = obs.deployment
    if dep is None:
        rollout = None
        ready_c = _cond(ready, FALSE, "DeploymentMissing", "The Deployment does not exist yet.")
        prog_c = _cond(progressing, TRUE, "Creating", "Creating the Deployment.")
    else:
        rollout = rollout_of(dep)
        counts = f"{rollout.ready}/{rollout.desired} replicas ready"
        if rollout.complete:
            ready_c = _cond(ready, TRUE, "ReplicasReady", f"{counts}.")
            prog_c = _cond(progressing, FALSE, "RolloutComplete", f"{counts}; the rollout is complete.")
        else:
            ready_c = _cond(
                ready, FALSE, "ReplicasNotReady", f"{counts} (pods load the model before they are ready)."
            )
            prog_c = _cond(
                progressing,
                TRUE,
                "RollingOut",
                f"{rollout.updated}/{rollout.desired} replicas updated, {counts}.",
            )

    if obs.apply_error:
        degraded_c = _cond(degraded, TRUE, "ApplyFailed", obs.apply_error)
    elif rollout is not None and rollout.failed_reason:
        degraded_c = _cond(degraded, TRUE, "RolloutFailed", rollout.failed_reason)
    elif obs.warnings:
        degraded_c = _cond(degraded, FALSE, "AsExpectedWithWarnings", "; ".join(obs.warnings))
    else:
        degraded_c = _cond(degraded, FALSE, "AsExpected", "")
    conds = [ready_c, prog_c, degraded_c, memory_cond]
    if obs.autoscaling is not None:
        conds.append(autoscaling.condition(obs.autoscaling))
    return conds


def _nofit_message(plan: MemoryPlan) -> str:
    chosen = plan.chosen
    numbers = (
        f"{chosen.quantization} needs {quantity_gib(chosen.total_bytes)} per replica "
        f"(weights {quantity_gib(chosen.weights_bytes)}, KV cache {quantity_gib(chosen.kv_cache_bytes)}, "
        f"overhead {quantity_gib(chosen.overhead_bytes)}) but the budget is {quantity_gib(chosen.budget_bytes)} "
        f"minus {quantity_gib(chosen.headroom_bytes)} headroom."
    )
    return f"{plan.reason} {numbers}".strip() if plan.reason else numbers


def with_times(
    conditions: Sequence[Mapping[str, Any]],
    previous: Sequence[Mapping[str, Any]] | None,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Add lastTransitionTime (kept while the status stays the same) and observedGeneration."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in conditions:
        old = before.get(cond["type"])
        since = old.get("lastTransitionTime") if old and old.get("status") == cond["status"] else None
        full = {**cond, "lastTransitionTime": since or now}
        if generation is not None:
            full["observedGeneration"] = generation
        out.append(full)
    return out


def compute_status(
    obs: Observation, previous: Mapping[str, Any] | None, *, now: str | None = None
) -> dict[str, Any]:
    """The whole ``status`` (camelCase, no None values) for an observation."""
    previous = previous or {}
    conditions = with_times(
        desired_conditions(obs),
        previous.get("conditions"),
        generation=obs.generation,
        now=now or now_rfc3339(),
    )
    status: dict[str, Any] = {"conditions": conditions}
    if obs.generation is not None:
        status["observedGeneration"] = obs.generation
    if obs.spec_error:
        return status
    if obs.plan is not None:
        status["quantization"] = obs.plan.chosen.quantization
        status["estimatedGpuMemory"] = obs.plan.estimated_gpu_memory
        if obs.plan.gpu_known:  # no budget to compare against otherwise
            status["estimate"] = estimate_status(obs.plan)
    if obs.selector:
        status["selector"] = obs.selector
    if obs.deployment is not None:
        rollout = rollout_of(obs.deployment)
        status["replicas"] = rollout.replicas
        status["readyReplicas"] = rollout.ready
    elif obs.deployment_skipped_reason:
        status["replicas"] = 0
        status["readyReplicas"] = 0
    if obs.endpoint and obs.deployment_skipped_reason is None:
        status["endpoint"] = obs.endpoint
    return status


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge patch turning ``current`` into ``desired``, or None when they are already equal.

    Keys the operator no longer sets are nulled (a merge patch deletes them).
    """
    current = dict(current or {})
    if _canon(current) == _canon(desired):
        return None
    patch: dict[str, Any] = copy.deepcopy(dict(desired))
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch


def _canon(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _canon(v) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


@dataclass(frozen=True)
class Notice:
    """An Event to post about the CR."""

    type: str  # Normal | Warning
    reason: str
    message: str


def transition_notices(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Notice]:
    """Events for notable transitions only (so a resync that changes nothing posts nothing)."""
    notices = []

    def changed(type_: str) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None, bool]:
        old, new = condition(before, type_), condition(after, type_)
        moved = new is not None and (
            old is None
            or (old.get("status"), old.get("reason"), old.get("message"))
            != (new.get("status"), new.get("reason"), new.get("message"))
        )
        return old, new, moved

    _, deg, moved = changed(ConditionType.DEGRADED.value)
    if moved and deg and deg["status"] == TRUE:
        notices.append(Notice("Warning", deg["reason"], deg["message"]))
    old_mem, mem, moved = changed(ConditionType.MEMORY_FIT.value)
    if moved and mem and mem["status"] == FALSE and (old_mem is None or old_mem.get("status") != FALSE):
        notices.append(Notice("Warning", "MemoryDoesNotFit", mem["message"]))
    old_ready, ready, _ = changed(ConditionType.READY.value)
    if ready and ready["status"] == TRUE and (old_ready is None or old_ready.get("status") != TRUE):
        notices.append(Notice("Normal", "Ready", ready["message"]))
    old_scaling, scaling, _ = changed(ConditionType.AUTOSCALING.value)
    was = old_scaling.get("status") if old_scaling else None
    if scaling and scaling["status"] == FALSE and was != FALSE:
        notices.append(Notice("Warning", "AutoscalingInactive", f"{scaling['reason']}: {scaling['message']}"))
    elif scaling and scaling["status"] == TRUE and was == FALSE:
        notices.append(Notice("Normal", "AutoscalingActive", scaling["message"]))
    if old_deg := condition(before, ConditionType.DEGRADED.value):
        new_deg = condition(after, ConditionType.DEGRADED.value)
        if old_deg.get("status") == TRUE and new_deg and new_deg.get("status") == FALSE:
            notices.append(
                Notice("Normal", "Recovered", f"No longer degraded (was {old_deg.get('reason')}).")
            )
    return notices
