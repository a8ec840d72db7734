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

Whether a child is in sync is :mod:`autoglm_operator.sync`; the status after the applies is
:mod:`autoglm_operator.observe`; the GPU from the nodes' labels is :mod:`autoglm_operator.nodes`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from autoglm_operator import api, autoscaling, metrics
from autoglm_operator import render as render_mod
from autoglm_operator.cache import HASH_ANNOTATION, Cache
from autoglm_operator.kube import KINDS, Kube, KubeApiError, kind_of
from autoglm_operator.memo import RenderMemo, render_key
from autoglm_operator.memory.errors import MemoryFitError
from autoglm_operator.nodes import GPU_PRODUCT_LABEL, node_gpu
from autoglm_operator.observe import backoff, observation, write_status
from autoglm_operator.status import Notice, Observation
from autoglm_operator.sync import applied_hash, current, in_sync, record_in_sync, with_hash

__all__ = [
    "APPLY_ORDER",
    "GPU_PRODUCT_LABEL",
    "HASH_ANNOTATION",
    "OPTIONAL_KINDS",
    "PRUNABLE",
    "Options",
    "Outcome",
    "RetryLater",
    "applied_hash",
    "backoff",
    "in_sync",
    "reconcile",
    "spec_error_text",
]


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
    memo: RenderMemo | None = None,
) -> Outcome:
    """Bring the children and status of the CR ``body`` in line with its spec (idempotent).

    ``cache`` is what the watches delivered (the operator's); without one nothing is known, so
    every child is applied. ``nodes``: the labels of the GPU nodes (GPU feature discovery).
    ``memo``: the operator's memo of recent renders (none: render every time)."""
    options = options or Options()
    cache = cache if cache is not None else Cache()
    started = clock()
    try:
        outcome = _reconcile(
            body, kube, logger, retry=retry, options=options, cache=cache, nodes=nodes, memo=memo
        )
    except kopf.TemporaryError:
        metrics.RECONCILES.labels(result="retrying").inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.observe(max(0.0, clock() - started))
    metrics.RECONCILES.labels(result=outcome.result).inc()
    meta = body.get("metadata") or {}
    metrics.MANAGED_COUNTS.set((meta.get("namespace", ""), meta.get("name", "")), outcome.children)
    return outcome


Logger = logging.Logger | logging.LoggerAdapter[Any]
Live = dict[tuple[str, str], Mapping[str, Any]]  # (kind, name) → the child's status view


def _reconcile(
    body: Mapping[str, Any],
    kube: Kube,
    logger: Logger,
    *,
    retry: int,
    options: Options,
    cache: Cache,
    nodes: Sequence[Mapping[str, str]],
    memo: RenderMemo | None,
) -> Outcome:
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    previous_status = body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Outcome(result="unchanged")

    # 1. Parse and render (pure). An invalid spec touches no child.
    try:
        # The CEL rules run once per generation (the API server ran them on admission too).
        uid, generation = meta.get("uid", ""), meta.get("generation")
        checked = cache.cel_checked(uid, generation)
        spec = render_mod.parse_spec(body, cel=not checked)
        if not checked:
            cache.mark_cel_checked(uid, generation)
        gpu = node_gpu(nodes, spec) if options.read_nodes else None
        rendered, wanted = _desired(body, spec, gpu, options, memo)
    except (render_mod.SpecError, MemoryFitError) as e:
        text = spec_error_text(e)
        logger.warning(f"Invalid spec of {api.KIND} {namespace}/{name}: {text}")
        outcome = Outcome(result="invalid")
        obs = Observation(generation=meta.get("generation"), spec_error=text)
        write_status(kube, cache, body, obs, previous_status, outcome, logger)
        return outcome

    # 2. Apply what the spec wants (skipping children in sync), 3. prune what it no longer wants.
    outcome = Outcome(result="unchanged")
    live: Live = {}
    warnings: list[str] = []
    apply_error: str | None = None
    try:
        _apply(wanted, namespace, kube, cache, options, outcome, live, warnings, logger)
        _prune(wanted, meta.get("uid", ""), kube, cache, outcome, logger)
    except KubeApiError as e:
        if e.transient:
            delay = backoff(retry)
            logger.warning(f"Transient API error, retrying in {delay:.0f}s: {e}")
            if retry < REPORT_AFTER_RETRIES:
                raise kopf.TemporaryError(str(e), delay=delay) from e
            # It keeps failing: say so on the CR (Degraded + a Warning Event) while retries go on.
            # The message carries no delay, so further identical failures write nothing new.
            failing = Outcome(result="retrying")
            obs = observation(
                spec, rendered, live, wanted, body, apply_error=f"{e} (retrying)", warnings=warnings
            )
            write_status(kube, cache, body, obs, previous_status, failing, logger)
            raise RetryLater(str(e), delay=delay, notices=failing.notices) from e
        apply_error = str(e)
        logger.error(f"API error the operator will not retry until the next spec change or resync: {e}")

    # 4. Status from the real Deployment (the applied or read object).
    obs = observation(spec, rendered, live, wanted, body, apply_error=apply_error, warnings=warnings)
    outcome.children = [k for (k, _) in live]
    if apply_error:
        outcome.result = "failed"
    elif rendered.deployment_skipped_reason:
        outcome.result = "memory_does_not_fit"
    elif outcome.writes:
        outcome.result = "applied"
    write_status(kube, cache, body, obs, previous_status, outcome, logger)
    return outcome


def _apply(
    wanted: list[dict[str, Any]],
    namespace: str,
    kube: Kube,
    cache: Cache,
    options: Options,
    outcome: Outcome,
    live: Live,
    warnings: list[str],
    logger: Logger,
) -> None:
    """Server-side apply each wanted child not known to be in sync; ``live`` gets every child's view.
    An optional kind whose CRD is not installed is skipped with a warning."""
    for desired in wanted:  # each carries its applied hash (_desired)
        kind = kind_of(desired)
        obj_ns, obj_name = desired["metadata"].get("namespace", namespace), desired["metadata"]["name"]
        try:
            record = current(cache, kube, kind, obj_ns, obj_name, desired)
            if record is not None and record_in_sync(record, desired):
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


def _prune(
    wanted: list[dict[str, Any]], uid: str, kube: Kube, cache: Cache, outcome: Outcome, logger: Logger
) -> None:
    """Delete the children this CR owns that the spec no longer wants (the cache's owner index)."""
    wanted_keys = {(o["kind"], o["metadata"]["name"]) for o in wanted}
    for child in cache.owned(uid) if uid else []:
        if child.kind not in PRUNABLE or (child.kind, child.name) in wanted_keys:
            continue
        if kube.delete(KINDS[child.kind], child.namespace, child.name, uid=child.uid):
            metrics.API_WRITES.labels(verb="delete", kind=child.kind).inc()
            outcome.writes.append(("delete", child.kind, f"{child.namespace}/{child.name}"))
            logger.info(f"Deleted {child.kind} {child.namespace}/{child.name} (no longer wanted by the spec)")
        cache.forget_child(child.kind, child.namespace, child.name)


def _desired(
    body: Mapping[str, Any],
    spec: api.AutoGLMDeploymentSpec,
    gpu: Any,
    options: Options,
    memo: RenderMemo | None,
) -> tuple[render_mod.Rendered, list[dict[str, Any]]]:
    """The render, and the objects it wants in apply order with their applied hashes; from the memo
    while the render's inputs are the same (never with ``--allow-network``: the hub may change)."""
    uid = str((body.get("metadata") or {}).get("uid") or "")
    use_memo = memo is not None and bool(uid) and not options.allow_network
    key = render_key(body, gpu, options.prometheus_address) if use_memo else ""
    if memo is not None and key and (hit := memo.get(uid, key)) is not None:
        return hit
    plan = _plan(spec, gpu) if options.allow_network else None
    rendered = render_mod.render(
        body, node_gpu=gpu, plan=plan, prometheus_address=options.prometheus_address, spec=spec
    )
    order = sorted(
        rendered.objects, key=lambda o: APPLY_ORDER.index(o["kind"]) if o["kind"] in APPLY_ORDER else 99
    )
    wanted = [with_hash(o) for o in order]
    if memo is not None and key:
        memo.put(uid, key, rendered, wanted)
    return dataclasses.replace(rendered, objects=wanted), wanted  # as a memo hit gives it


def _plan(spec: api.AutoGLMDeploymentSpec, node_gpu: Any) -> Any:
    """Plan with hub access (``--allow-network``): models outside the catalog get their config.json."""
    from autoglm_operator.memory import plan_memory  # type: ignore[attr-defined]

    return plan_memory(spec, node_gpu, allow_network=True)
