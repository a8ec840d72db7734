"""When and where a reconcile runs: per CR a lock and one waiting request (later requests fold
into it), two thread pools (new and changed CRs and repairs never queue behind status-following
work and resyncs), retries scheduled through the CR's resync daemon. The kopf handlers
(:mod:`autoglm_operator.handlers`) decide *that* a CR needs a reconcile; this module runs it."""

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

from autoglm_operator import api
from autoglm_operator.cache import Cache
from autoglm_operator.kube import Kube
from autoglm_operator.memo import RenderMemo
from autoglm_operator.reconcile import Options, Outcome, RetryLater, reconcile

RESYNC_JITTER = 0.1  # ± fraction of the resync period
FRESH_THREADS = 4  # reconciles of created/changed CRs, deleted or drifted children
BACKGROUND_THREADS = 2  # reconciles that follow a child's status, resyncs, retries
# A reconcile that follows a child's status waits this long before it queues, and every request
# for the CR meanwhile folds into it: a rollout's successive status updates (the controller writes
# a new Deployment's status 2-4 times within a second, then again when the HPA scales it) become one
# reconcile. An urgent request (a new or changed CR, a deleted or drifted child) cuts the wait.
FOLLOW_DELAY = 1.0


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of the handlers (``autoglm-operator run`` flags)."""

    resync_seconds: float = 600.0
    options: Options = dataclasses.field(default_factory=Options)
    # Hook for tests and embedders: tune kopf's settings after ours (timeouts, backoffs).
    tune: Callable[[kopf.OperatorSettings], None] | None = None
    kube_factory: Callable[[], Kube] = Kube
    follow_delay: float = FOLLOW_DELAY


class State:
    """Per-operator state: one API client, the cache, and per CR a lock and its next check."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.cache = Cache()
        self.memo = RenderMemo()  # recent renders: most reconciles change nothing (memo.py)
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
        self.hurry: dict[tuple[str, str], asyncio.Event] = {}  # set: a waiting follower goes now
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
        self.memo.forget(uid)
        self.failures.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)
        self.waiting.pop((namespace, name), None)
        self.urgent.pop((namespace, name), None)
        self.hurry.pop((namespace, name), None)
        self.due.pop(uid, None)
        self._wake.pop(uid, None)
        self._gone.pop(uid, asyncio.Event()).set()

    def close(self) -> None:
        self.fresh.shutdown(wait=False, cancel_futures=True)
        self.background.shutdown(wait=False, cancel_futures=True)
        if self._kube is not None:
            self._kube.close()
            self._kube = None


async def post_notices(body: Mapping[str, Any], outcome: Outcome) -> None:
    for notice in outcome.notices:
        kopf.event(cast(kopf.Body, body), type=notice.type, reason=notice.reason, message=notice.message)


async def run(
    state: State,
    namespace: str,
    name: str,
    uid: str,
    logger: Any,
    nodes: list[dict[str, str]],
    *,
    urgent: bool = False,
    follow: bool = False,
) -> Outcome | None:
    """Reconcile the CR as the cache holds it, under its lock (so the status it compares against
    includes the previous reconcile's write). None when the CR is gone or was replaced (another
    uid), or when a reconcile of it is already waiting (it reads the newest cache: this request is
    folded into it). ``urgent`` (a new or changed CR, a deleted or drifted child) runs on the
    threads that status-following work and resyncs cannot occupy; ``follow`` (a child's status
    changed) first waits ``follow_delay`` for more news of the CR to fold in. A transient failure
    schedules a retry with backoff through the CR's daemon."""
    key = (namespace, name)
    state.urgent[key] = state.urgent.get(key, False) or urgent
    if state.waiting.get(key):
        if urgent and key in state.hurry:
            state.hurry[key].set()
        return None
    state.waiting[key] = True
    if follow and not urgent and state.config.follow_delay > 0:
        hurry = state.hurry[key] = asyncio.Event()
        try:
            await asyncio.wait_for(hurry.wait(), state.config.follow_delay)
        except TimeoutError:
            pass
        finally:
            state.hurry.pop(key, None)
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
                memo=state.memo,
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
                    await post_notices(body, Outcome(result="retrying", notices=e.notices))
                return None
            state.failures.pop(key, None)
            await post_notices(body, outcome)
            # A spec change that landed meanwhile may already sit in the cache, carried by our own
            # status patch's response (its watch event is then no news): reconcile it now.
            now = state.cache.cr(namespace, name)
            if now is None or now["metadata"].get("generation") == body["metadata"].get("generation"):
                break
            state.urgent[key] = True
    return outcome


def request(
    state: State,
    namespace: str,
    name: str,
    uid: str,
    logger: Any,
    nodes: list[dict[str, str]],
    *,
    urgent: bool,
) -> None:
    """Ask for a reconcile of the CR and return at once: kopf's worker for the event, and the
    event's body with it, are done while the reconcile waits for its turn (at startup, thousands
    of listed bodies were held until their owners' reconciles ran)."""
    task = asyncio.create_task(
        run(state, namespace, name, uid, logger, nodes, urgent=urgent, follow=not urgent)
    )
    state.tasks.add(task)
    task.add_done_callback(functools.partial(_done, state, logger, f"{namespace}/{name}"))


def _done(state: State, logger: Any, what: str, task: asyncio.Task[Any]) -> None:
    state.tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error(f"Reconcile of {api.KIND} {what} failed: {task.exception()!r}")
