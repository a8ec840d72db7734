"""The kopf glue: when to reconcile. What a reconcile does lives in :mod:`autoglm_operator.reconcile`.

Triggers, all ending in the same idempotent ``reconcile``:

- the CR is created, its spec changes, or the operator starts (``on.create/update/resume``);
- a child the operator manages is deleted, a Deployment changes (readiness → status), or an HPA's or
  ScaledObject's conditions change (→ the ``Autoscaling`` condition): a watch on children with the
  ``app.kubernetes.io/managed-by=autoglm-operator`` label (``on.event``);
- a resync loop per CR (a kopf daemon, every ``--resync-seconds``) as the backstop for anything missed.

No finalizer is ever put on the CR: there is no delete handler (children carry owner references
and the garbage collector removes them), and the resync daemon is registered without the finalizer
kopf would add for daemons by default. Kopf keeps its own bookkeeping in ``autoglm.io/*``
annotations, never in ``status`` (the status schema is strict).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
from kubernetes.config.config_exception import ConfigException

from autoglm_operator import api, labels, metrics
from autoglm_operator.autoscaling import AutoscalerState
from autoglm_operator.kube import KINDS, ApiError, Kube, bearer_token, load_configuration
from autoglm_operator.reconcile import CR_KIND, Options, Outcome, RetryLater, backoff, reconcile

ANNOTATION_PREFIX = "autoglm.io"
# Children whose deletion or change brings the owner back to a reconcile.
WATCHED_CHILDREN = (
    "Deployment",
    "Service",
    "ConfigMap",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "PodDisruptionBudget",
)
# Children whose own status feeds the CR's status: a change of it brings the owner back.
STATUS_CHILDREN = frozenset({"Deployment", "HorizontalPodAutoscaler", "ScaledObject"})
AUTOSCALERS = frozenset({"HorizontalPodAutoscaler", "ScaledObject"})


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of the handlers (``autoglm-operator run`` flags)."""

    resync_seconds: float = 60.0
    options: Options = dataclasses.field(default_factory=Options)
    # Hook for tests and embedders: tune kopf's settings after ours (timeouts, backoffs).
    tune: Callable[[kopf.OperatorSettings], None] | None = None
    kube_factory: Callable[[], Kube] = Kube


class _State:
    """Per-operator state: one API client and one lock per CR (reconciles of one CR never overlap)."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self._kube: Kube | None = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.failures: dict[tuple[str, str], int] = {}  # consecutive transient failures per CR
        self._gone: dict[str, asyncio.Event] = {}
        # The last conditions seen per autoscaler: the HPA controller rewrites its status every 15 s
        # (current metrics, times); only a change of its conditions is news for the CR.
        self.autoscalers: dict[tuple[str, str, str], AutoscalerState] = {}

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = self.config.kube_factory()
        return self._kube

    def gone(self, uid: str) -> asyncio.Event:
        """Set when the CR with this uid is deleted: its resync loop ends at once (kopf does not stop
        it, as there is no finalizer)."""
        return self._gone.setdefault(uid, asyncio.Event())

    def forget(self, uid: str) -> None:
        self._gone.pop(uid, asyncio.Event()).set()

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def close(self) -> None:
        if self._kube is not None:
            self._kube.close()
            self._kube = None


def configure_settings(settings: kopf.OperatorSettings) -> None:
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


async def _post(body: Mapping[str, Any], outcome: Outcome) -> None:
    for notice in outcome.notices:
        kopf.event(cast(kopf.Body, body), type=notice.type, reason=notice.reason, message=notice.message)


async def _run(state: _State, body: Mapping[str, Any], logger: Any, retry: int = 0) -> Outcome | None:
    """Reconcile the CR ``body`` names, as it is now: re-read under the CR's lock, so the status the
    reconcile compares against includes the previous reconcile's write (no redundant status patch,
    no lost lastTransitionTime). None when the CR is gone or was replaced (another uid)."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    async with state.lock(namespace, name):
        try:
            fresh = await asyncio.to_thread(state.kube.get, CR_KIND, namespace, name)
        except ApiError as e:
            if e.transient:
                raise kopf.TemporaryError(
                    f"cannot read {api.KIND} {namespace}/{name}: {e}", delay=backoff(retry)
                ) from e
            raise
        if fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
            return None
        key = (namespace, name)
        # Consecutive transient failures of this CR, whichever trigger ran them (kopf's retry count
        # covers only its own handler's retries, not the resync loop or child events).
        failures = max(retry, state.failures.get(key, 0))
        try:
            outcome = await asyncio.to_thread(
                reconcile, fresh, state.kube, logger, retry=failures, options=state.config.options
            )
        except kopf.TemporaryError as e:
            state.failures[key] = failures + 1
            if isinstance(e, RetryLater):
                await _post(fresh, Outcome(result="retrying", notices=e.notices))
            raise
        state.failures.pop(key, None)
    await _post(fresh, outcome)
    return outcome


def _owner(child: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and str(ref.get("apiVersion", "")).startswith(f"{api.GROUP}/"):
            return ref
    return None


def _child_event_matters(type: str | None, body: kopf.Body, **_: Any) -> bool:  # noqa: A002 (kopf's name)
    return type == "DELETED" or (type == "MODIFIED" and body.get("kind") in STATUS_CHILDREN)


def _autoscaler_news(state: _State, type: str | None, body: Mapping[str, Any]) -> bool:  # noqa: A002
    """Whether an autoscaler's event changes what the CR reports (its conditions); remembers them."""
    meta = body.get("metadata") or {}
    key = (str(body.get("kind")), meta.get("namespace", ""), meta.get("name", ""))
    if type == "DELETED":
        state.autoscalers.pop(key, None)
        return True
    seen = AutoscalerState.of(body)
    if state.autoscalers.get(key) == seen:
        return False
    state.autoscalers[key] = seen
    return True


def register(registry: kopf.OperatorRegistry, config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    """Register every handler of the operator on ``registry`` (a fresh one per operator or test)."""
    config = config or OperatorConfig()
    state = _State(config)
    resource = (api.GROUP, api.VERSION, api.PLURAL)

    @kopf.on.startup(registry=registry, id="configure")
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings)
        if config.tune is not None:
            config.tune(settings)

    @kopf.on.cleanup(registry=registry, id="close-client")
    def _cleanup(**_: Any) -> None:
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

    @kopf.on.resume(*resource, registry=registry, id="reconcile", deleted=False)
    @kopf.on.create(*resource, registry=registry, id="reconcile")
    @kopf.on.update(*resource, registry=registry, id="reconcile")
    async def on_change(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        await _run(state, body, logger, retry)  # returns None: kopf stores nothing in status

    async def resync(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, **_: Any) -> None:
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace"), meta.get("name")
        gone = state.gone(meta.get("uid", ""))
        while not stopped and not gone.is_set():
            waiters = [
                asyncio.ensure_future(stopped.wait(config.resync_seconds)),
                asyncio.ensure_future(gone.wait()),
            ]
            _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
            if stopped or gone.is_set():
                return
            try:
                if await _run(state, body, logger) is None:
                    logger.debug(f"{api.KIND} {namespace}/{name} is gone; its resync stops.")
                    return
            except kopf.TemporaryError as e:
                logger.warning(
                    f"Resync of {api.KIND} {namespace}/{name} failed ({e}); retrying at the next one."
                )

    _daemon_without_finalizer(registry, resync, resource, id="resync")

    async def on_child(type: str | None, body: kopf.Body, logger: Any, **_: Any) -> None:  # noqa: A002 (kopf's name)
        ref = _owner(body)
        if ref is None:
            return
        if body.get("kind") in AUTOSCALERS and not _autoscaler_news(state, type, body):
            return
        namespace = body.get("metadata", {}).get("namespace")
        owner = {"metadata": {"namespace": namespace, "name": ref["name"], "uid": ref.get("uid")}}
        logger.debug(
            f"{type} {body.get('kind')} {namespace}/{body['metadata']['name']}: reconciling its owner"
        )
        try:
            await _run(state, owner, logger)
        except kopf.TemporaryError as e:  # event handlers are not retried; the resync loop will be
            logger.warning(f"Reconcile after a child event failed ({e}); the resync loop retries.")

    for kind_name in WATCHED_CHILDREN:
        kind = KINDS[kind_name]
        group, _, version = kind.api_version.rpartition("/")
        kopf.on.event(
            group,
            version,
            kind.plural,
            registry=registry,
            id=f"child-{kind.plural}",
            labels={"app.kubernetes.io/managed-by": labels.MANAGED_BY},
            # ADDED comes from our own apply and None from the initial listing (on.resume covers
            # it); of the changes, only those of children whose status feeds the CR's matter
            # (Deployment readiness, the autoscaler's conditions).
            when=_child_event_matters,
        )(on_child)

    @kopf.on.event(*resource, registry=registry, id="forget", when=lambda type, **_: type == "DELETED")
    async def on_cr_deleted(body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata", {})
        metrics.MANAGED_COUNTS.forget((meta.get("namespace", ""), meta.get("name", "")))
        state.failures.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        state.forget(meta.get("uid", ""))

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
    object goes. The resync loop does not need that: it re-reads the CR each tick and exits when the
    CR is gone, while a finalizer would make deleting a CR depend on the operator running. (A kopf
    timer would not do: without a finalizer kopf never stops it.) The e2e tests check that the CR
    carries no finalizer.
    """
    kopf.daemon(*resource, registry=registry, id=id, cancellation_timeout=5.0)(fn)
    handlers = registry._spawning._handlers  # kopf offers no public switch for this
    for i, handler in enumerate(handlers):
        if handler.id == id:
            handlers[i] = dataclasses.replace(handler, requires_finalizer=False)
