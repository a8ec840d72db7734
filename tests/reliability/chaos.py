"""Fault injection for the operator runs, and the check that the cluster converged to what the CRs want.

:class:`ChaosEmulator` is the e2e :class:`ApiEmulator` (kmock + server-side apply, GC, write counting)
with, for requests of the operator and of kopf only (the test's own client is never disturbed):

- random faults at ``fault_rate``: HTTP 500, 409 Conflict, 429 Too Many Requests (with Retry-After),
  slow answers (0.2–1 s), and watch streams cut after 0.2–3 s (kopf must reconnect);
- a ``blackout``: every request answered 503, as if the operator process had died — used to stop an
  operator *mid-reconcile* at a random write (``blackout_after_writes``): what it wrote before
  stays, nothing after lands;
- a request log per (client, verb, resource), so a test can say "the operator never read a Secret".

:func:`differences` compares the emulator's objects with ``render()`` of the CRs it holds: missing,
extra (duplicates, orphans), stale or drifted children, stale status. An empty list = converged.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import attrs

from autoglm_operator import api
from autoglm_operator.memory.errors import MemoryFitError
from autoglm_operator.reconcile import HASH_ANNOTATION, applied_hash
from autoglm_operator.render import SpecError, render
from tests.operator.e2e.emulator import ApiEmulator, _status, client_of

FAULTS = ("500", "409", "429", "slow", "drop-watch")
CHILD_KINDS = {
    "configmaps": "ConfigMap",
    "services": "Service",
    "deployments": "Deployment",
    "horizontalpodautoscalers": "HorizontalPodAutoscaler",
    "poddisruptionbudgets": "PodDisruptionBudget",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "servicemonitors": "ServiceMonitor",
}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _verb(request: Any) -> str:
    method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
    if method == "GET":
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return method.lower()


@attrs.define(kw_only=True)
class ChaosEmulator(ApiEmulator):
    fault_rate: float = attrs.field(default=0.0, init=False)
    fault_kinds: tuple[str, ...] = attrs.field(default=FAULTS, init=False)
    injected: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    seen: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    blackout: bool = attrs.field(default=False, init=False)
    blackout_after_writes: int | None = attrs.field(default=None, init=False)
    rng: random.Random = attrs.field(factory=lambda: random.Random(0), init=False)
    _operator_writes: int = attrs.field(default=0, init=False)

    def faults_off(self) -> None:
        self.fault_rate = 0.0
        self.blackout = False
        self.blackout_after_writes = None

    def kill_after(self, writes: int) -> None:
        """Black out the operator once it has made ``writes`` more writes (a kill at that point)."""
        self._operator_writes = 0
        self.blackout_after_writes = writes

    def _forget_history(self) -> None:
        """kmock keeps every request for assertions and scans that history on each request (O(n)),
        which makes long runs quadratic; these tests assert on their own counters instead."""
        if len(self._requests) > 64:
            del self._requests[:-1]  # the last one is the request being served
            for payload in self._payloads:
                payload._requests.clear()

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        self._forget_history()
        client = client_of(request.headers.get("User-Agent"))
        verb = _verb(request)
        plural = request.resource.plural if request.resource is not None else "-"
        self.seen[(client, verb, plural)] += 1
        if client not in ("operator", "kopf") or request.resource is None:
            return await super()._handle(request)
        method = verb.upper()
        if self.blackout_after_writes is not None and method in WRITES:
            self._operator_writes += 1
            if self._operator_writes > self.blackout_after_writes:
                self.blackout = True
        if self.blackout:
            self.injected["blackout"] += 1
            return _status(503, "ServiceUnavailable", "injected: the operator is dead (blackout)")
        if self.fault_rate and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(self.fault_kinds)
            if fault == "drop-watch" and verb != "watch":
                fault = "500"
            self.injected[fault] += 1
            if fault in ("500", "409"):
                reason = "InternalError" if fault == "500" else "Conflict"
                return _status(int(fault), reason, f"injected {fault} for {verb} {plural}")
            if fault == "429":
                response = _status(429, "TooManyRequests", "injected throttling")
                response.headers["Retry-After"] = "1"
                return response
            if fault == "slow":
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            elif fault == "drop-watch":
                try:
                    return await asyncio.wait_for(super()._handle(request), self.rng.uniform(0.2, 3.0))
                except TimeoutError:
                    # Headers are out: ending the handler now cuts the stream mid-way.
                    raise aiohttp.web.HTTPServiceUnavailable() from None
        return await super()._handle(request)

    def reads_of(self, plural: str) -> int:
        return sum(
            n
            for (client, verb, res), n in self.seen.items()
            if res == plural and client in ("operator", "kopf") and verb in ("get", "list", "watch")
        )

    def faults_total(self) -> int:
        return sum(n for kind, n in self.injected.items() if kind != "blackout")


def _subset(want: Any, have: Any) -> bool:
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(_subset, want, have))
    return bool(want == have)


_RENDERED: dict[tuple[str, Any], tuple[dict[tuple[str, str], dict[str, Any]], str | None]] = {}


def desired_of(cr: Mapping[str, Any]) -> tuple[dict[tuple[str, str], dict[str, Any]], str | None]:
    """Children ``render`` wants for ``cr`` by (kind, name), or the field path of its spec error.
    Cached by (uid, generation): a render takes ~10 ms and the emulator shares this event loop."""
    key = (cr["metadata"]["uid"], cr["metadata"].get("generation"))
    if key not in _RENDERED:
        _RENDERED[key] = _desired_of(cr)
    return _RENDERED[key]


def _desired_of(cr: Mapping[str, Any]) -> tuple[dict[tuple[str, str], dict[str, Any]], str | None]:
    try:
        rendered = render(cr)
    except (SpecError, MemoryFitError) as e:
        return {}, getattr(e, "field_path", None) or "spec"
    return {(o["kind"], o["metadata"]["name"]): o for o in rendered.objects}, None


def differences(emu: ChaosEmulator, namespace: str, *, served: set[str] | None = None) -> list[str]:
    """What differs between the emulator's objects in ``namespace`` and render() of its CRs."""
    problems: list[str] = []
    crs = emu.objects_of(api.PLURAL, namespace)
    uids = {cr["metadata"]["uid"] for cr in crs}
    kept: set[str] = set()
    desired: dict[tuple[str, str], dict[str, Any]] = {}
    for cr in crs:
        name = cr["metadata"]["name"]
        status = cr.get("status") or {}
        if status.get("observedGeneration") != cr["metadata"].get("generation"):
            problems.append(
                f"{name}: status.observedGeneration {status.get('observedGeneration')} "
                f"!= generation {cr['metadata'].get('generation')}"
            )
        wanted, error_path = desired_of(cr)
        if error_path is not None:
            # An invalid spec touches no child: what the last valid spec made keeps running.
            kept.add(cr["metadata"]["uid"])
            degraded = next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), None)
            if not degraded or degraded["status"] != "True" or error_path not in degraded.get("message", ""):
                problems.append(f"{name}: invalid at {error_path} but Degraded is {degraded}")
        for key, obj in wanted.items():
            if key[0] == "ServiceMonitor" and (served is None or "servicemonitors" not in served):
                continue
            desired[key] = obj
    live: dict[tuple[str, str], dict[str, Any]] = {}
    for plural, kind in CHILD_KINDS.items():
        for obj in emu.objects_of(plural, namespace):
            live[(kind, obj["metadata"]["name"])] = obj
    for key in sorted(set(desired) - set(live)):
        problems.append(f"missing {key[0]} {key[1]}")
    for key in sorted(set(live) - set(desired)):
        refs = live[key]["metadata"].get("ownerReferences") or []
        if any(r.get("uid") in kept for r in refs):
            continue
        orphan = refs and not any(r.get("uid") in uids for r in refs)
        problems.append(f"{'orphan' if orphan else 'extra'} {key[0]} {key[1]}")
    for key in sorted(set(live) & set(desired)):
        have = live[key]
        want = desired[key]
        if (have["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) != applied_hash(want):
            problems.append(f"stale {key[0]} {key[1]} (applied hash differs)")
        elif not _subset({k: v for k, v in want.items() if k != "metadata"}, have):
            problems.append(f"drifted {key[0]} {key[1]} (live fields differ from render)")
    return problems


async def wait_converged(h: Any, *, timeout: float = 60.0, served: set[str] | None = None) -> list[str]:
    """Poll until the namespace matches render() of its CRs; the differences left at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        diff = differences(h.emulator, h.namespace, served=served)
        if not diff or loop.time() > deadline:
            return diff
        await asyncio.sleep(0.2)
