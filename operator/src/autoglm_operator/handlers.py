"""The kopf glue: when to reconcile. What a reconcile does lives in :mod:`autoglm_operator.reconcile`.

The operator reads the cluster only through its watches (:mod:`autoglm_operator.cache`):

- every event of a CR (``on.event``: the initial listing, created, changed, our own status patch's
  echo) updates the cached CR; an event newer than what the cache holds reconciles it, the echo of
  the operator's own write does not;
- children the operator labelled ``app.kubernetes.io/managed-by=autoglm-operator`` are watched with
  that label as a *server-side* selector (the API server sends nothing else); an event reconciles
  the owner only when the child was deleted, drifted from what was applied, or the part of its
  status the CR reports changed (Deployment readiness, an autoscaler's conditions);
- GPU-labelled nodes (``nvidia.com/gpu.product`` present, server-side) are a kopf index of their
  labels for the memory planner: kopf fills indexes from the initial listing before any other
  handler runs, so no CR is planned on half the nodes; a later change of a node's labels schedules
  a re-check of every CR;
- a per-CR kopf daemon is the backstop: a resync every ``--resync-seconds`` (default 600, ±10%
  jitter so 1,000 CRs do not re-check in step) and the retries of transient failures. A resync of
  an unchanged CR makes no API request: it renders and compares with the cache.

Reconciles of one CR never overlap (a lock per CR). No finalizer is ever put on the CR: children
carry owner references and the garbage collector removes them, and the daemon is registered
without the finalizer kopf would add by default. Kopf writes nothing to the CR: no change-detection
handler (``on.create/update/resume``) is registered, so no ``last-handled-configuration`` or
progress annotations.

Peering: kopf pauses the watches and stops the daemons of a replica that is not the leader, so a
standby neither reconciles nor retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import kopf

from autoglm_operator import api, labels, malloc, metrics
from autoglm_operator.cache import Change
from autoglm_operator.dispatch import OperatorConfig, State, request, run
from autoglm_operator.kube import KINDS, load_configuration
from autoglm_operator.reconcile import GPU_PRODUCT_LABEL

__all__ = ["CHILD_SELECTOR", "OperatorConfig", "WATCHED_CHILDREN", "configure_settings", "register"]

ANNOTATION_PREFIX = "autoglm.io"
# Children whose deletion, drift or status brings the owner back to a reconcile.
WATCHED_CHILDREN = (
    "Deployment",
    "Service",
    "ConfigMap",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "PodDisruptionBudget",
    "PersistentVolumeClaim",
    "ServiceMonitor",
    # spec.routing
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "InferencePool",
    "HTTPRoute",
)
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={labels.MANAGED_BY}"
NODE_RECHECK_DELAY = 1.0  # seconds: a burst of node events (the listing) re-checks the CRs once
LIST_CHUNK = 100  # objects per page of kopf's initial listings
TRIM_SECONDS = 60.0  # how often freed memory goes back to the kernel (malloc.trim)
WORKER_IDLE_SECONDS = 0.3  # kopf's per-object worker: exit this soon after its last event


class QuietEventHandlers(logging.Filter):
    """Drops kopf's ``Handler 'X' succeeded.`` for the watch-event handlers (the CR's, the
    children's, the nodes'): they only update the cache and ask for a reconcile, and kopf logs it
    for every listed object, so a restart or a reconnect at 1,000 CRs wrote ~6,600 such lines (98%
    of the operator's log on the real server). Failures, and the reconciles' own lines, stay."""

    _QUIET = re.compile(r"Handler '(reconcile|child-[a-z]+|gpu-nodes-changed|gpu_nodes)' succeeded\.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and self._QUIET.fullmatch(record.getMessage()))


def configure_settings(settings: kopf.OperatorSettings, *, read_nodes: bool = True) -> None:
    """Kopf settings the operator relies on (see the module docstring)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/kopf-finalizer"  # never added, see above
    settings.posting.reporting_component = "autoglm-operator"
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Listings in pages: a restart at 1,000 CRs does not parse 1,000 Deployments in one response.
    settings.watching.chunk_size = LIST_CHUNK
    # Kopf's per-object worker keeps the last raw event (the whole body) while it waits for the next
    # one, 5 s by default: after a restart at 1,000 CRs that is every listed CR and child at once.
    # Our handlers only update the cache and ask for a reconcile, so a worker has nothing to wait
    # for; measured on a real v1.36 server, restart at 1,000 CRs: RSS 173-193 → 160-169 MiB.
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # Retries of a failed request (a watch too) every few seconds at most: kopf's default climbs to
    # 13 and 21 s, so after a 45 s API outage a new CR waited 44 s for the watches to come back
    # (measured on a real v1.36 server); with gaps of at most 5 s it is reconciled within seconds.
    settings.networking.error_backoffs = (0.5, 1, 2, 3, 5, 5, 5, 5, 5, 5, 5, 5)
    # Server-side selection: the API server sends only our children and only GPU nodes.
    child_plurals = {KINDS[kind].plural for kind in WATCHED_CHILDREN}
    settings.watching.label_selectors[lambda r: r.plural in child_plurals] = CHILD_SELECTOR
    if read_nodes:
        settings.watching.label_selectors[lambda r: r.group == "" and r.plural == "nodes"] = GPU_PRODUCT_LABEL


def _node_labels(kwargs: Mapping[str, Any]) -> list[dict[str, str]]:
    """The GPU nodes' labels from the kopf index (absent with ``--no-node-lookup``)."""
    index = kwargs.get("gpu_nodes")
    return [labels for _, labels in index.get(None, [])] if index is not None else []


async def _trim_forever() -> None:
    """Hand the memory freed after a burst back to the kernel, once a minute (a few ms)."""
    while True:
        await asyncio.sleep(TRIM_SECONDS)
        await asyncio.to_thread(malloc.trim)


def _owner(child: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and str(ref.get("apiVersion", "")).startswith(f"{api.GROUP}/"):
            return ref
    return None


def register(registry: kopf.OperatorRegistry, config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    """Register every handler of the operator on ``registry`` (a fresh one per operator or test)."""
    config = config or OperatorConfig()
    state = State(config)
    _register_lifecycle(registry, state)
    _register_crs(registry, state)
    _register_children(registry, state)
    if config.options.read_nodes:
        _register_nodes(registry, state)
    return registry


def _register_lifecycle(registry: kopf.OperatorRegistry, state: State) -> None:
    """Settings, login with the operator's own credentials, and cleanup."""
    config = state.config
    background: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry, id="configure")
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, read_nodes=config.options.read_nodes)
        if config.tune is not None:
            config.tune(settings)
        background.append(asyncio.create_task(_trim_forever(), name="malloc trim"))

    @kopf.on.cleanup(registry=registry, id="close-client")
    async def _cleanup(**_: Any) -> None:
        for task in [*background, *state.tasks]:
            task.cancel()
        state.close()

    @kopf.on.login(registry=registry, id="login")
    def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same credentials as the operator's own client (in-cluster, else $KUBECONFIG);
        # a kopf.LoginError names what is missing.
        return dataclasses.replace(load_configuration(), trust_env=settings.networking.trust_env)


def _register_crs(registry: kopf.OperatorRegistry, state: State) -> None:
    """The CR's events (news reconciles it) and its resync daemon (the backstop, and retries)."""
    resource = (api.GROUP, api.VERSION, api.PLURAL)

    @kopf.on.event(*resource, registry=registry, id="reconcile")
    async def on_cr(type: str | None, body: kopf.Body, logger: Any, **kw: Any) -> None:  # noqa: A002 (kopf's name)
        meta = body.get("metadata", {})
        namespace, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
        if type == "DELETED":
            metrics.MANAGED_COUNTS.forget((namespace, name))
            state.forget(namespace, name, uid)
            return
        news = state.cache.observe_cr(body)  # not the echo of our own status patch
        observed = (body.get("status") or {}).get("observedGeneration")
        release_body(body)  # the cache has what reconciling needs
        if news:
            request(state, namespace, name, uid, logger, _node_labels(kw),
                    urgent=observed != meta.get("generation"))  # fmt: skip

    async def resync(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, **kw: Any) -> None:
        meta = body.get("metadata", {})
        namespace, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
        gone, wake = state.gone(uid), state.wake(uid)
        state.due.setdefault(uid, state.next_resync())
        while not stopped and not gone.is_set():
            wake.clear()
            delay = max(0.0, state.due.get(uid, 0.0) - time.monotonic())
            waiters = [
                asyncio.ensure_future(stopped.wait(delay)),
                asyncio.ensure_future(gone.wait()),
                asyncio.ensure_future(wake.wait()),
            ]
            _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
            if stopped or gone.is_set():
                return
            if time.monotonic() < state.due.get(uid, 0.0):
                continue  # woken to re-plan (an earlier retry or re-check was scheduled)
            state.due[uid] = state.next_resync()
            if state.cache.cr(namespace, name) is not None:
                await run(state, namespace, name, uid, logger, _node_labels(kw))

    _daemon_without_finalizer(registry, resync, resource, id="resync")


KEPT_ANNOTATIONS_MAX = 1024  # annotations longer than this (kubectl's last-applied copy of the CR) go


def release_body(body: kopf.Body) -> None:
    """Let kopf keep only the CR's metadata (without ``managedFields``), not its whole body.

    Kopf keeps the latest body of each object that has a daemon (its ``live_fresh_body``: the
    daemon's ``body``, and the ``body`` of that object's later handlers) for as long as the object
    exists, so with the resync daemon it held every CR whole: the spec as the API server filled
    it with defaults, the status, ``managedFields``, kubectl's last-applied copy. The operator
    reads CRs from its compact cache; kopf's daemon machinery reads only the metadata (deletion,
    finalizers), and puts the next event's whole body back before it calls any handler. The call
    is kopf's private ``_replace_with`` (a test pins it).
    """
    meta = body.get("metadata") or {}
    slim = {k: v for k, v in meta.items() if k != "managedFields"}
    if isinstance(annotations := meta.get("annotations"), Mapping):
        slim["annotations"] = {k: v for k, v in annotations.items() if len(str(v)) <= KEPT_ANNOTATIONS_MAX}
    body._replace_with({"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": slim})


def _register_children(registry: kopf.OperatorRegistry, state: State) -> None:
    """Children's events: a deleted or drifted child, or a status the CR reports, reconciles the owner."""

    async def on_child(type: str | None, body: kopf.Body, logger: Any, **kw: Any) -> None:  # noqa: A002 (kopf's name)
        change = state.cache.observe_child(body, type)
        ref = _owner(body)
        if change is Change.NONE or ref is None:
            return
        namespace = body.get("metadata", {}).get("namespace", "")
        logger.debug(f"{type} {body.get('kind')} {namespace}/{body['metadata']['name']} ({change.value}): "
                     "reconciling its owner")  # fmt: skip
        urgent = change in (Change.GONE, Change.DRIFT)  # a repair; a status change can wait a little
        request(
            state, namespace, ref["name"], str(ref.get("uid") or ""), logger, _node_labels(kw), urgent=urgent
        )

    for kind_name in WATCHED_CHILDREN:
        kind = KINDS[kind_name]
        kopf.on.event(
            kind.group, kind.api_version.rpartition("/")[2], kind.plural,
            registry=registry, id=f"child-{kind.plural}",
        )(on_child)  # fmt: skip


def _register_nodes(registry: kopf.OperatorRegistry, state: State) -> None:
    """GPU nodes' labels as a kopf index; a change of them re-checks every CR (once per burst)."""
    recheck: dict[str, asyncio.TimerHandle] = {}

    @kopf.index("", "v1", "nodes", registry=registry, id="gpu_nodes")
    def gpu_nodes(name: str, labels: Mapping[str, str], **_: Any) -> Any:
        return {None: (name, dict(labels))}

    seen: dict[str, dict[str, str]] = {}

    @kopf.on.event("", "v1", "nodes", registry=registry, id="gpu-nodes-changed")
    async def on_node(type: str | None, name: str, labels: Mapping[str, str], **_: Any) -> None:  # noqa: A002
        # Nodes change often (conditions, heartbeats); only a change of their labels is news.
        now = {} if type == "DELETED" else dict(labels)
        before = seen.pop(name, None) if type == "DELETED" else seen.get(name)
        if type != "DELETED":
            seen[name] = now
        if type is None or before == now or "pending" in recheck:
            return  # the listing filled the index before any CR was planned

        # GPU facts changed: every CR's plan may change. Once, after a burst of node events.
        def due_now() -> None:
            recheck.pop("pending", None)
            for uid in list(state.due):
                state.schedule(uid, 0.0)

        recheck["pending"] = asyncio.get_running_loop().call_later(NODE_RECHECK_DELAY, due_now)


def _daemon_without_finalizer(
    registry: kopf.OperatorRegistry,
    fn: Any,
    resource: tuple[str, str, str],
    *,
    id: str,  # noqa: A002
) -> None:
    """A per-CR kopf daemon that does not put a finalizer on the CR.

    Kopf marks every daemon and timer ``requires_finalizer=True`` so it can stop them before the
    object goes. The resync loop does not need that: it exits when the CR's DELETED event arrives,
    while a finalizer would make deleting a CR depend on the operator running. (A kopf timer would
    not do: without a finalizer kopf never stops it.) The e2e tests check that the CR carries no
    finalizer.
    """
    kopf.daemon(*resource, registry=registry, id=id, cancellation_timeout=5.0)(fn)
    handlers = registry._spawning._handlers  # kopf offers no public switch for this
    for i, handler in enumerate(handlers):
        if handler.id == id:
            handlers[i] = dataclasses.replace(handler, requires_finalizer=False)
