"""One reconcile of one AutoGLMDeployment: parse → render (pure) → apply → prune → status.

The rules it keeps:

- Children are written with server-side apply (field manager ``autoglm-operator``, ``force``), so
  fields other managers own (the HPA's replica count, other controllers' annotations) stay theirs.
- Nothing is read from the API server: the CR, its children and the nodes come from what the
  operator's watches delivered (:mod:`autoglm_operator.cache`). A child whose ``autoglm.io/applied-hash``
  equals the hash of what would be applied, and whose content is the one last known in sync, is
  left alone: a resync of an unchanged spec makes no API request at all, while a child edited
  behind the operator's back (its watch event changes its fingerprint) is re-applied. The one read:
  a child first seen in the listing after the operator starts is fetched once and compared in
  full with what would be applied.
- Children the spec no longer wants (HPA when autoscaling is off, PDB disabled, the Deployment when
  the model does not fit) are deleted. Only objects owned by this CR (owner uid, from the cache's
  owner index) are ever deleted; cache PVCs are never pruned (weights are expensive to fetch
  again), they go with the CR.
- An invalid spec writes only the CR's status (Degraded, naming the field) and never retries on its
  own: the next spec change, or the resync timer, looks again.
- Transient API errors (connection, 409, 429, 5xx) raise ``kopf.TemporaryError`` with a backoff.
- The CR's spec is never written; its status is patched only when it changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from autoglm_operator import api, autoscaling, labels, metrics, routing
from autoglm_operator import render as render_mod
from autoglm_operator.cache import HASH_ANNOTATION, Cache, ChildRecord
from autoglm_operator.kube import KINDS, Kind, Kube, KubeApiError, kind_of
from autoglm_operator.memory.errors import MemoryFitError
from autoglm_operator.status import (
    Notice,
    Observation,
    compute_status,
    endpoint_url,
    status_patch,
    transition_notices,
)

CR_KIND = KINDS[api.KIND]

# Apply order: what the Deployment mounts or is scaled by exists before it, or right after.
APPLY_ORDER = (
    "ConfigMap",
    "PersistentVolumeClaim",
    "Service",
    # spec.routing: the endpoint picker's identity and rights before its pods
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Deployment",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "PodDisruptionBudget",
    "ServiceMonitor",
    # spec.routing: the pool over the pods, then the route to it
    "InferencePool",
    "HTTPRoute",
)
# Kinds pruned when the spec no longer wants them (PVCs stay until the CR goes).
PRUNABLE = (
    "Deployment",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "Service",
    "ConfigMap",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "InferencePool",
    "HTTPRoute",
)
# Kinds that may be absent from a cluster (a CRD not installed): skipped with a warning.
OPTIONAL_KINDS = frozenset({"ServiceMonitor", "ScaledObject", "InferencePool", "HTTPRoute"})

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


# Transient failures (5xx, 429, no answer) are retried quietly once; from the second consecutive
# failure on, the CR shows Degraded=True (ApplyFailed, the object and the API server's message) and
# a Warning Event, while the retries go on.
REPORT_AFTER_RETRIES = 1


class RetryLater(kopf.TemporaryError):
    """A transient failure that was also reported on the CR: the handler posts ``notices`` as Events
    before kopf retries."""

    def __init__(self, message: str, *, delay: float, notices: list[Notice]) -> None:
        super().__init__(message, delay=delay)
        self.notices = notices


@dataclass
class Outcome:
    """What one reconcile did (handlers post ``notices`` as Events; tests read ``writes``)."""

    result: str  # one of metrics.RESULTS
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, kind, namespace/name)
    status: dict[str, Any] | None = None
    status_written: bool = False
    notices: list[Notice] = field(default_factory=list)
    children: list[str] = field(default_factory=list)  # kinds present after the reconcile


@dataclass(frozen=True)
class Options:
    """Operator-wide knobs that reach reconcile (from ``autoglm-operator run`` flags)."""

    read_nodes: bool = True  # look up GPU memory from GPU-feature-discovery node labels
    allow_network: bool = False  # let the planner fetch config.json from the hub
    field_manager: str = "autoglm-operator"
    prometheus_address: str = autoscaling.DEFAULT_PROMETHEUS_ADDRESS  # KEDA's Prometheus trigger


def applied_hash(obj: Mapping[str, Any]) -> str:
    """Stable hash of an object as it would be applied (without the hash annotation itself)."""
    data = json.loads(json.dumps(obj, sort_keys=True, default=str))
    (data.get("metadata", {}).get("annotations") or {}).pop(HASH_ANNOTATION, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def with_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(obj))
    out.setdefault("metadata", {}).setdefault("annotations", {})[HASH_ANNOTATION] = applied_hash(obj)
    return out


def _contains(live: Any, want: Any) -> bool:
    """Every field of ``want`` is in ``live`` with the same value (fields only ``live`` has, such as
    server defaults, are fine; scalars compare as text too, so ``1`` matches the server's ``"1"``)."""
    if isinstance(want, Mapping):
        return isinstance(live, Mapping) and all(k in live and _contains(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(_contains, live, want))
    return bool(live == want or str(live) == str(want))


def in_sync(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """No apply needed: the live child carries the applied hash of ``desired`` *and* still holds
    every field the operator sets. The hash alone misses drift: someone editing a child's fields
    (``kubectl edit``) leaves the annotation as it was."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if annotations.get(HASH_ANNOTATION) != desired["metadata"]["annotations"][HASH_ANNOTATION]:
        return False
    body = {k: v for k, v in desired.items() if k not in ("metadata", "status")}
    meta = desired.get("metadata") or {}
    return _contains(live, body) and _contains(
        live.get("metadata") or {},
        {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}},
    )


def backoff(retry: int) -> float:
    """Seconds before retrying a transient failure: 1, 2, 4 … capped at 60."""
    return float(min(60, 2 ** min(retry, 6)))


def spec_error_text(exc: render_mod.SpecError | MemoryFitError) -> str:
    """``field.path: message`` of a spec the operator cannot act on (both errors name the field alike)."""
    path, message = exc.field_path, exc.message
    return f"{path}: {message}" if path and not message.startswith(path) else message


def reconcile(
    body: Mapping[str, Any],
    kube: Kube,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    *,
    retry: int = 0,
    options: Options | None = None,
    cache: Cache | None = None,
    nodes: Sequence[Mapping[str, str]] = (),
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Bring the children and status of the CR ``body`` in line with its spec (idempotent).

    ``cache`` is what the watches delivered (the operator's); without one nothing is known, so
    every child is applied. ``nodes``: the labels of the GPU nodes (GPU feature discovery)."""
    options = options or Options()
    cache = cache if cache is not None else Cache()
    started = clock()
    try:
        outcome = _reconcile(body, kube, logger, retry=retry, options=options, cache=cache, nodes=nodes)
    except kopf.TemporaryError:
        metrics.RECONCILES.labels(result="retrying").inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.observe(max(0.0, clock() - started))
    metrics.RECONCILES.labels(result=outcome.result).inc()
    meta = body.get("metadata") or {}
    metrics.MANAGED_COUNTS.set((meta.get("namespace", ""), meta.get("name", "")), outcome.children)
    return outcome


def _reconcile(
    body: Mapping[str, Any],
    kube: Kube,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    *,
    retry: int,
    options: Options,
    cache: Cache,
    nodes: Sequence[Mapping[str, str]],
) -> Outcome:

    meta = body.get("metadata") or {}
    namespace, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
    generation = meta.get("generation")
    previous_status = body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Outcome(result="unchanged")

    # 1. Parse and render (pure). An invalid spec touches no child.
    try:
        spec = render_mod.parse_spec(body)
        node_gpu = _node_gpu(nodes, spec) if options.read_nodes else None
        plan = _plan(spec, node_gpu) if options.allow_network else None
        rendered = render_mod.render(
            body, node_gpu=node_gpu, plan=plan, prometheus_address=options.prometheus_address
        )
    except (render_mod.SpecError, MemoryFitError) as e:
        text = spec_error_text(e)
        logger.warning(f"Invalid spec of {api.KIND} {namespace}/{name}: {text}")
        obs = Observation(generation=generation, spec_error=text)
        outcome = Outcome(result="invalid")
        _write_status(kube, cache, body, obs, previous_status, outcome, logger)
        return outcome

    # 2. Apply what the spec wants, skipping children that already carry the same applied hash.
    outcome = Outcome(result="unchanged")
    live: dict[tuple[str, str], Mapping[str, Any]] = {}  # (kind, name) → the child's status view
    warnings: list[str] = []
    apply_error: str | None = None
    wanted = sorted(
        rendered.objects, key=lambda o: APPLY_ORDER.index(o["kind"]) if o["kind"] in APPLY_ORDER else 99
    )
    try:
        for obj in wanted:
            kind = kind_of(obj)
            obj_ns, obj_name = obj["metadata"].get("namespace", namespace), obj["metadata"]["name"]
            desired = with_hash(obj)
            try:
                record = _current(cache, kube, kind, obj_ns, obj_name, desired)
                if record is not None and _record_in_sync(record, desired):
                    live[(kind.kind, obj_name)] = record.view or {}
                    continue
                record = cache.record_applied(kube.apply(desired, field_manager=options.field_manager))
                live[(kind.kind, obj_name)] = record.view or {}
            except KubeApiError as e:
                if kind.kind in OPTIONAL_KINDS and e.status == 404:
                    warnings.append(f"{kind.kind} skipped: its CRD ({kind.api_version}) is not installed")
                    continue
                raise
            metrics.API_WRITES.labels(verb="apply", kind=kind.kind).inc()
            outcome.writes.append(("apply", kind.kind, f"{obj_ns}/{obj_name}"))
            logger.info(f"Applied {kind.kind} {obj_ns}/{obj_name}")

        # 3. Prune children this CR owns that the spec no longer wants (the cache's owner index).
        wanted_keys = {(o["kind"], o["metadata"]["name"]) for o in wanted}
        for child in cache.owned(uid) if uid else []:
            if child.kind not in PRUNABLE or (child.kind, child.name) in wanted_keys:
                continue
            if kube.delete(KINDS[child.kind], child.namespace, child.name, uid=child.uid):
                metrics.API_WRITES.labels(verb="delete", kind=child.kind).inc()
                outcome.writes.append(("delete", child.kind, f"{child.namespace}/{child.name}"))
                logger.info(
                    f"Deleted {child.kind} {child.namespace}/{child.name} (no longer wanted by the spec)"
                )
            cache.forget_child(child.kind, child.namespace, child.name)
    except KubeApiError as e:
        if e.transient:
            delay = backoff(retry)
            logger.warning(f"Transient API error, retrying in {delay:.0f}s: {e}")
            if retry < REPORT_AFTER_RETRIES:
                raise kopf.TemporaryError(str(e), delay=delay) from e
            # It keeps failing: say so on the CR (Degraded + a Warning Event) while retries go on.
            # The message carries no delay, so further identical failures write nothing new.
            failing = Outcome(result="retrying")
            obs = _observation(
                spec, rendered, live, wanted, body, apply_error=f"{e} (retrying)", warnings=warnings
            )
            _write_status(kube, cache, body, obs, previous_status, failing, logger)
            raise RetryLater(str(e), delay=delay, notices=failing.notices) from e
        apply_error = str(e)
        logger.error(f"API error the operator will not retry until the next spec change or resync: {e}")

    # 4. Status from the real Deployment (the applied or read object).
    obs = _observation(spec, rendered, live, wanted, body, apply_error=apply_error, warnings=warnings)
    outcome.children = [k for (k, _) in live]
    if apply_error:
        outcome.result = "failed"
    elif rendered.deployment_skipped_reason:
        outcome.result = "memory_does_not_fit"
    elif outcome.writes:
        outcome.result = "applied"
    _write_status(kube, cache, body, obs, previous_status, outcome, logger)
    return outcome


def _current(
    cache: Cache, kube: Kube, kind: Kind, namespace: str, name: str, desired: Mapping[str, Any]
) -> ChildRecord | None:
    """The cache's record of a child; one read, the first time after the operator started, when the
    record came from the listing and was never compared in full with what the operator applies."""
    record = cache.child(kind.kind, namespace, name)
    if record is None or record.trusted is not None:
        return record
    current = kube.get(kind, namespace, name)
    if current is None:
        cache.forget_child(kind.kind, namespace, name)
        return None
    return cache.verify(record, current, in_sync(current, desired))


def _record_in_sync(record: ChildRecord, desired: Mapping[str, Any]) -> bool:
    """No apply needed: the child carries the applied hash of ``desired`` and nobody changed it since
    it was last known to be in sync (nor its replica count, where the operator sets one)."""
    if record.trusted is None or record.drifted:
        return False
    if record.applied_hash != desired["metadata"]["annotations"][HASH_ANNOTATION]:
        return False
    replicas = (desired.get("spec") or {}).get("replicas") if isinstance(desired.get("spec"), Mapping) else None
    return replicas is None or record.replicas == replicas


def _observation(
    spec: api.AutoGLMDeploymentSpec,
    rendered: render_mod.Rendered,
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
    rendered: render_mod.Rendered,
    live: Mapping[tuple[str, str], Mapping[str, Any]],
    warnings: list[str],
) -> autoscaling.AutoscalingView | None:
    """The autoscaler the spec wants, as it is live (None when autoscaling is off or no pods are wanted)."""
    if not spec.autoscaling_enabled or spec.autoscaling is None or rendered.deployment_skipped_reason:
        return None
    kind = "ScaledObject" if spec.autoscaling.engine is api.AutoscalingEngine.KEDA else "HorizontalPodAutoscaler"
    obj = next((o for (k, _), o in live.items() if k == kind), None)
    return autoscaling.AutoscalingView(
        engine=spec.autoscaling.engine,
        metric=spec.autoscaling.metric,
        state=autoscaling.AutoscalerState.of(obj) if obj is not None else None,
        crd_missing=any(w.startswith(f"{kind} skipped") for w in warnings),
    )


def _write_status(
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


def _plan(spec: api.AutoGLMDeploymentSpec, node_gpu: Any) -> Any:
    """Plan with hub access (``--allow-network``): models outside the catalog get their config.json."""
    from autoglm_operator.memory import plan_memory  # type: ignore[attr-defined]

    return plan_memory(spec, node_gpu, allow_network=True)


def _node_gpu(nodes: Sequence[Mapping[str, str]], spec: api.AutoGLMDeploymentSpec) -> Any:
    """GPU facts from the GPU-feature-discovery labels of the nodes the pods can land on (``nodes``:
    the labels of the GPU-labelled nodes, from the operator's watch).

    With ``resources.gpu.product``: a node with that product label. Without a product (and without
    an explicit memory): every GPU-labelled node matching ``scheduling.nodeSelector``, and of those
    the GPU with the least memory (the pods may land on any of them). Without access to nodes
    (``--no-node-lookup``) the planner uses its product table, or deploys an explicit quantization
    without a fit check.
    """
    gpu = spec.resources.gpu
    if gpu.memory or gpu.count == 0:
        return None
    from autoglm_operator.memory.gpus import gpu_from_node_labels
    from autoglm_operator.render import gpu_product_label

    if gpu.product:
        wanted = {GPU_PRODUCT_LABEL: gpu_product_label(gpu.product)}
    else:
        wanted = dict(spec.scheduling.node_selector)
    candidates = [
        node for node in nodes if GPU_PRODUCT_LABEL in node and all(node.get(k) == v for k, v in wanted.items())
    ]
    found = [info for info in map(gpu_from_node_labels, candidates) if info is not None]
    if not found:
        return None
    return found[0] if gpu.product else min(found, key=lambda info: info.memory_bytes)
