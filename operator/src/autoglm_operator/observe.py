"""After the applies: what the status is computed from (:class:`Observation`), and writing it.

The status comes from the real children (the applied or read objects), never from the spec alone:
``Ready`` follows the Deployment's ready replicas, ``Autoscaling`` the live HPA or ScaledObject.
The CR's status is patched only when it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kopf

from autoglm_operator import api, autoscaling, labels, metrics, routing
from autoglm_operator.cache import Cache
from autoglm_operator.kube import KINDS, Kube, KubeApiError
from autoglm_operator.render import Rendered
from autoglm_operator.status import (
    Observation,
    compute_status,
    endpoint_url,
    status_patch,
    transition_notices,
)

if TYPE_CHECKING:
    from autoglm_operator.reconcile import Outcome

CR_KIND = KINDS[api.KIND]


def backoff(retry: int) -> float:
    """Seconds before retrying a transient failure: 1, 2, 4 … capped at 60."""
    return float(min(60, 2 ** min(retry, 6)))


def observation(
    spec: api.AutoGLMDeploymentSpec,
    rendered: Rendered,
    live: Mapping[tuple[str, str], Mapping[str, Any]],
    wanted: list[dict[str, Any]],
    body: Mapping[str, Any],
    *,
    apply_error: str | None,
    warnings: list[str],
) -> Observation:
    """What the status is computed from, after the applies (some may have failed)."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    workload = labels.workload_name(name)  # the runtime's, not the endpoint picker's
    deployment = next((obj for (k, n), obj in live.items() if k == "Deployment" and n == workload), None)
    service = next((o for o in wanted if o["kind"] == "Service" and o["metadata"]["name"] == workload), None)
    return Observation(
        autoscaling=_autoscaling_view(spec, rendered, live, warnings),
        generation=meta.get("generation"),
        plan=rendered.plan,
        skip_fit_check=spec.memory.skip_fit_check,
        deployment_skipped_reason=rendered.deployment_skipped_reason,
        deployment=deployment,
        selector=labels.selector_string(name),
        endpoint=routing.route_endpoint(spec)
        or endpoint_url(
            service["metadata"]["name"] if service else workload,
            namespace,
            spec.serving.port,
            tls=spec.serving.tls_secret is not None,
        ),
        apply_error=apply_error,
        warnings=tuple(warnings),
    )


def _autoscaling_view(
    spec: api.AutoGLMDeploymentSpec,
    rendered: Rendered,
    live: Mapping[tuple[str, str], Mapping[str, Any]],
    warnings: list[str],
) -> autoscaling.AutoscalingView | None:
    """The autoscaler the spec wants, as it is live (None when autoscaling is off or no pods are wanted)."""
    if not spec.autoscaling_enabled or spec.autoscaling is None or rendered.deployment_skipped_reason:
        return None
    kind = (
        "ScaledObject" if spec.autoscaling.engine is api.AutoscalingEngine.KEDA else "HorizontalPodAutoscaler"
    )
    obj = next((o for (k, _), o in live.items() if k == kind), None)
    return autoscaling.AutoscalingView(
        engine=spec.autoscaling.engine,
        metric=spec.autoscaling.metric,
        state=autoscaling.AutoscalerState.of(obj) if obj is not None else None,
        crd_missing=any(w.startswith(f"{kind} skipped") for w in warnings),
    )


def write_status(
    kube: Kube,
    cache: Cache,
    body: Mapping[str, Any],
    obs: Observation,
    previous: Mapping[str, Any],
    outcome: Outcome,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name", "")
    new_status = compute_status(obs, previous)
    outcome.status = new_status
    outcome.notices = transition_notices(previous, new_status)
    patch = status_patch(previous, new_status)
    if patch is None:
        return
    try:
        written = kube.patch(CR_KIND, namespace, name, {"status": patch}, subresource="status")
    except KubeApiError as e:
        if e.not_found:  # the CR is gone; nothing to report on
            return
        if e.transient:
            raise kopf.TemporaryError(f"status update failed: {e}", delay=backoff(0)) from e
        raise
    metrics.API_WRITES.labels(verb="patch_status", kind=api.KIND).inc()
    if written.get("metadata"):
        cache.record_cr(written)  # the next reconcile compares against this status, not an older one
    outcome.status_written = True
    conds = ", ".join(f"{c['type']}={c['status']}" for c in new_status.get("conditions", []))
    logger.info(f"Updated status of {api.KIND} {namespace}/{name}: {conds}")
