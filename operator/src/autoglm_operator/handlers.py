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
import functools
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import kopf
from kubernetes.config.config_exception import ConfigException

from autoglm_operator import api, labels, malloc, metrics
from autoglm_operator.cache import Cache, Change
from autoglm_operator.kube import KINDS, Kube, bearer_token, load_configuration
from autoglm_operator.reconcile import GPU_PRODUCT_LABEL, Options, Outcome, RetryLater, reconcile

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
RESYNC_JITTER = 0.1  # ± fraction of the resync period
NODE_RECHECK_DELAY = 1.0  # seconds: a burst of node events (the listing) re-checks the CRs once
FRESH_THREADS = 4  # reconciles of created/changed CRs, deleted or drifted children
BACKGROUND_THREADS = 2  # reconciles that follow a child's status, resyncs, retries
LIST_CHUNK = 100  # objects per page of kopf's initial listings
TRIM_SECONDS = 60.0  # how often freed memory goes back to the kernel (malloc.trim)


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of the handlers (``autoglm-operator run`` flags)."""

    resync_seconds: float = 600.0
    options: Options = dataclasses.field(default_factory=Options)
    # Hook for tests and embedders: tune kopf's settings after ours (timeouts, backoffs).
    tune: Callable[[kopf.OperatorSettings], None] | None = None
    kube_factory: Callable[[], Kube] = Kube


class _State:
    """Per-operator state: one API client, the cache, and per CR a lock and its next check."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.cache = Cache()
        self._kube: Kube | None = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.failures: dict[tuple[str, str], int] = {}  # consecutive transient failures per CR
        self.due: dict[str, float] = {}  # uid → when its daemon reconciles next (monotonic)
        self._wake: dict[str, asyncio.Event] = {}
        self._gone: dict[str, asyncio.Event] = {}
        # Coalescing: per CR, whether a reconcile is already waiting for the lock (it will read the
        # newest cache, so more requests add nothing) and the most urgent priority asked of it.
        self.waiting: dict[tuple[str, str], bool] = {}
        self.urgent: dict[tuple[str, str], bool] = {}
        # New and changed CRs (and repairs) never queue behind status-following work and resyncs.
        self.fresh = ThreadPoolExecutor(FRESH_THREADS, thread_name_prefix="reconcile-fresh")
        self.background = ThreadPoolExecutor(BACKGROUND_THREADS, thread_name_prefix="reconcile-background")
        self.tasks: set[asyncio.Task[Any]] = set()  # requested reconciles (kept from the GC until done)

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = self.config.kube_factory()
        return self._kube

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def gone(self, uid: str) -> asyncio.Event:
        return self._gone.setdefault(uid, asyncio.Event())

    def wake(self, uid: str) -> asyncio.Event:
        return self._wake.setdefault(uid, asyncio.Event())

    def next_resync(self) -> float:
        period = self.config.resync_seconds
        return time.monotonic() + period * random.uniform(1 - RESYNC_JITTER, 1 + RESYNC_JITTER)  # noqa: S311

    def schedule(self, uid: str, delay: float) -> None:
        """Have the CR's daemon reconcile it within ``delay`` seconds (a retry, a re-check)."""
        at = time.monotonic() + delay
        if at < self.due.get(uid, float("inf")):
            self.due[uid] = at
            self.wake(uid).set()

    def forget(self, namespace: str, name: str, uid: str) -> None:
        self.cache.forget_cr(namespace, name)
        self.failures.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)
        self.waiting.pop((namespace, name), None)
        self.urgent.pop((namespace, name), None)
        self.due.pop(uid, None)
        self._wake.pop(uid, None)
        self._gone.pop(uid, asyncio.Event()).set()

    def close(self) -> None:
        self.fresh.shutdown(wait=False, cancel_futures=True)
        self.background.shutdown(wait=False, cancel_futures=True)
        if self._kube is not None:
            self._kube.close()
            self._kube = None


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
    # Retries of a failed request (a watch too) every few seconds at most: kopf's default climbs to
    # 13 and 21 s, so after a 45 s API outage a new CR waited 44 s for the watches to come back
    # (measured on a real v1.36 server); with gaps of at most 5 s it is reconciled within seconds.
    settings.networking.error_backoffs = (0.5, 1, 2, 3, 5, 5, 5, 5, 5, 5, 5, 5)
    # Server-side selection: the API server sends only our children and only GPU nodes.
    child_plurals = {KINDS[kind].plural for kind in WATCHED_CHILDREN}
    settings.watching.label_selectors[lambda r: r.plural in child_plurals] = CHILD_SELECTOR
    if read_nodes:
        settings.watching.label_selectors[lambda r: r.group == "" and r.plural == "nodes"] = GPU_PRODUCT_LABEL


async def _post(body: Mapping[str, Any], outcome: Outcome) -> None:
    for notice in outcome.notices:
        kopf.event(cast(kopf.Body, body), type=notice.type, reason=notice.reason, message=notice.message)


def _node_labels(kwargs: Mapping[str, Any]) -> list[dict[str, str]]:
    """The GPU nodes' labels from the kopf index (absent with ``--no-node-lookup``)."""
    index = kwargs.get("gpu_nodes")
    return [labels for _, labels in index.get(None, [])] if index is not None else []


async def _run(
    state: _State,
    namespace: str,
    name: str,
    uid: str,
    logger: Any,
    nodes: list[dict[str, str]],
    *,
    urgent: bool = False,
) -> Outcome | None:
    """Reconcile the CR as the cache holds it, under its lock (so the status it compares against
    includes the previous reconcile's write). None when the CR is gone or was replaced (another
    uid), or when a reconcile of it is already waiting (it reads the newest cache: this request is
    folded into it). ``urgent`` (a new or changed CR, a deleted or drifted child) runs on the
    threads that status-following work and resyncs cannot occupy. A transient failure schedules a
    retry with backoff through the CR's daemon."""
    key = (namespace, name)
    state.urgent[key] = state.urgent.get(key, False) or urgent
    if state.waiting.get(key):
        return None
    state.waiting[key] = True
    async with state.lock(namespace, name):
        state.waiting[key] = False
        outcome: Outcome | None = None
        for _ in range(3):  # at most twice more, when the CR changed while it was reconciled
            body = state.cache.cr(namespace, name)
            if body is None or body["metadata"].get("uid") != uid:
                return None
            failures = state.failures.get(key, 0)  # consecutive, whichever trigger ran them
            executor = state.fresh if state.urgent.pop(key, False) else state.background
            work = functools.partial(
                reconcile,
                body,
                state.kube,
                logger,
                retry=failures,
                options=state.config.options,
                cache=state.cache,
                nodes=nodes,
            )
            try:
                outcome = await asyncio.get_running_loop().run_in_executor(executor, work)
            except kopf.TemporaryError as e:
                state.failures[key] = failures + 1
                state.schedule(uid, float(e.delay or 1.0))
                logger.warning(
                    f"Reconcile of {api.KIND} {namespace}/{name} failed ({e}); retrying in {e.delay}s."
                )
                if isinstance(e, RetryLater):
                    await _post(body, Outcome(result="retrying", notices=e.notices))
                return None
            state.failures.pop(key, None)
            await _post(body, outcome)
            # A spec change that landed meanwhile may already sit in the cache, carried by our own
            # status patch's response (its watch event is then no news): reconcile it now.
            now = state.cache.cr(namespace, name)
            if now is None or now["metadata"].get("generation") == body["metadata"].get("generation"):
                break
            state.urgent[key] = True
    return outcome


def _request(
    state: _State, namespace: str, name: str, uid: str, logger: Any, nodes: list[dict[str, str]], *, urgent: bool
) -> None:
    """Ask for a reconcile of the CR and return at once: kopf's worker for the event, and the
    event's body with it, are done while the reconcile waits for its turn (at startup, thousands
    of listed bodies were held until their owners' reconciles ran)."""
    task = asyncio.create_task(_run(state, namespace, name, uid, logger, nodes, urgent=urgent))
    state.tasks.add(task)
    task.add_done_callback(functools.partial(_done, state, logger, f"{namespace}/{name}"))


def _done(state: _State, logger: Any, what: str, task: asyncio.Task[Any]) -> None:
    state.tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error(f"Reconcile of {api.KIND} {what} failed: {task.exception()!r}")


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
    state = _State(config)
    resource = (api.GROUP, api.VERSION, api.PLURAL)

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
        # The same credentials as the operator's own client (in-cluster, else $KUBECONFIG).
        try:
            cfg = load_configuration()
        except ConfigException as e:
            raise kopf.LoginError(f"No in-cluster service account and no usable kubeconfig: {e}") from e
        scheme, token = bearer_token(cfg)
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            trust_env=settings.networking.trust_env,
        )

    @kopf.on.event(*resource, registry=registry, id="reconcile")
    async def on_cr(type: str | None, body: kopf.Body, logger: Any, **kw: Any) -> None:  # noqa: A002 (kopf's name)
        meta = body.get("metadata", {})
        namespace, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
        if type == "DELETED":
            metrics.MANAGED_COUNTS.forget((namespace, name))
            state.forget(namespace, name, uid)
            return
        if state.cache.observe_cr(body):  # not the echo of our own status patch
            observed = (body.get("status") or {}).get("observedGeneration")
            _request(state, namespace, name, uid, logger, _node_labels(kw),
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
                await _run(state, namespace, name, uid, logger, _node_labels(kw))

    _daemon_without_finalizer(registry, resync, resource, id="resync")

    async def on_child(type: str | None, body: kopf.Body, logger: Any, **kw: Any) -> None:  # noqa: A002 (kopf's name)
        change = state.cache.observe_child(body, type)
        ref = _owner(body)
        if change is Change.NONE or ref is None:
            return
        namespace = body.get("metadata", {}).get("namespace", "")
        logger.debug(f"{type} {body.get('kind')} {namespace}/{body['metadata']['name']} ({change.value}): "
                     "reconciling its owner")
        urgent = change in (Change.GONE, Change.DRIFT)  # a repair; a status change can wait a little
        _request(state, namespace, ref["name"], str(ref.get("uid") or ""), logger, _node_labels(kw), urgent=urgent)

    for kind_name in WATCHED_CHILDREN:
        kind = KINDS[kind_name]
        kopf.on.event(
            kind.group, kind.api_version.rpartition("/")[2], kind.plural,
            registry=registry, id=f"child-{kind.plural}",
        )(on_child)

    if config.options.read_nodes:
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

    return registry


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
