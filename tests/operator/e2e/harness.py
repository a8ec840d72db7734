"""What the e2e scenarios run against: an API (emulated or real), a namespace, and the operator.

The operator runs in-process through ``autoglm_operator.commands.run.run`` — the function behind
``autoglm-operator run`` — in a thread with its own event loop, as in a pod. The scenarios talk to
the API with the operator's own :class:`Kube` client (User-Agent ``autoglm-e2e``, so the emulator
can tell the test's writes from the operator's).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoglm_operator import api, metrics
from autoglm_operator.commands import run as run_cmd
from autoglm_operator.kube import KINDS, Kube, KubeApiError, load_configuration

CR = KINDS[api.KIND]
TIMEOUT = 20.0  # generous: the machine is shared; the scenarios usually settle in well under a second


def cr_body(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(spec),
    }


def fast_kopf(settings: Any) -> None:
    """Kopf settings that keep a test run short (no behaviour the scenarios check depends on them)."""
    settings.watching.client_timeout = 30
    settings.watching.reconnect_backoff = 0.1
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    settings.persistence.consistency_timeout = 1.0
    settings.queueing.idle_timeout = 1.0
    settings.queueing.exit_timeout = 1.0
    settings.background.instant_exit_timeout = 0.5
    settings.process.ultimate_exiting_timeout = 5.0
    settings.execution.max_workers = 4


@dataclass
class Harness:
    kube: Kube
    namespace: str
    emulator: Any = None  # the ApiEmulator, or None against a real cluster
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def emulated(self) -> bool:
        return self.emulator is not None

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking client call off the event loop (the emulator serves on this loop)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- the operator -------------------------------------------------------------------------

    async def start_operator(
        self, *, resync_seconds: float = 60.0, extra_args: list[str] | None = None
    ) -> None:
        parser = run_cmd.argparse.ArgumentParser()
        run_cmd.add_arguments(parser)
        args = parser.parse_args(
            [
                "--standalone",
                # kmock cannot serve GET /api/v1/namespaces (kopf lists namespaces for --namespace),
                # so the emulated run watches cluster-wide; every test has a fresh emulator anyway.
                *(["--all-namespaces"] if self.emulated else ["--namespace", self.namespace]),
                "--liveness-port",
                "0",
                "--metrics-port",
                "0",
                "--resync-seconds",
                str(resync_seconds),
                "--log-format",
                "text",
                *(extra_args or []),
            ]
        )
        ready = threading.Event()
        # A fresh stop flag: stop_operator() sets the old one for good, and a restarted operator
        # handed a set flag would stop at once.
        self._stop = threading.Event()
        hooks = run_cmd.Hooks(stop_flag=self._stop, ready_flag=ready, tune=fast_kopf, configure_logging=False)
        self._thread = threading.Thread(target=run_cmd.run, args=(args, hooks), name="operator", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(ready.wait, TIMEOUT):
            raise AssertionError("the operator did not start watching")

    async def stop_operator(self) -> None:
        if self._thread is not None:
            self._stop.set()
            await asyncio.to_thread(self._thread.join, TIMEOUT)
            assert not self._thread.is_alive(), "the operator did not stop"
            self._thread = None

    # -- objects ------------------------------------------------------------------------------

    async def create_cr(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call(self.kube.create, cr_body(name, self.namespace, spec))

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return await self.call(self.kube.get, KINDS[kind], self.namespace, name)

    async def patch_spec(self, name: str, spec_patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call(self.kube.patch, CR, self.namespace, name, {"spec": dict(spec_patch)})

    async def delete(self, kind: str, name: str) -> bool:
        return await self.call(self.kube.delete, KINDS[kind], self.namespace, name)

    async def children(self, name: str) -> dict[str, dict[str, Any]]:
        """Live children of the CR ``name`` by kind."""
        found = {}
        for kind in ("ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            items = await self.call(
                self.kube.list,
                KINDS[kind],
                self.namespace,
                label_selector=f"app.kubernetes.io/instance={name}",
            )
            for item in items:
                found[kind] = item
        return found

    async def events_for(self, name: str) -> list[dict[str, Any]]:
        items = await self.call(self.kube.list, KINDS["Event"], self.namespace)
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    async def set_status(self, kind: str, name: str, status: Mapping[str, Any]) -> None:
        """Play a child's controller (emulator only): write its status subresource."""
        await self.call(
            self.kube.patch, KINDS[kind], self.namespace, name, {"status": dict(status)}, subresource="status"
        )

    async def set_deployment_ready(self, name: str, ready: int) -> None:
        """Play the Deployment controller (emulator only: a real controller owns this status)."""
        dep = await self.get("Deployment", name)
        assert dep is not None
        replicas = int(dep["spec"].get("replicas", 1))
        status = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        await self.call(
            self.kube.patch,
            KINDS["Deployment"],
            self.namespace,
            name,
            {"status": status},
            subresource="status",
        )

    # -- waiting ------------------------------------------------------------------------------

    async def eventually(
        self, check: Callable[[], Awaitable[Any]], what: str, timeout: float = TIMEOUT
    ) -> Any:
        """Poll ``check`` until it returns something truthy; fail with ``what`` and the last value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")

    async def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        cr = await self.get(api.KIND, name)
        for cond in ((cr or {}).get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None

    async def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, *, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            cond = await self.condition(name, type_)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
                return cond
            return None

        return await self.eventually(
            check, f"{type_}={status} ({reason or 'any reason'}) on {name}", timeout=timeout
        )

    async def settle(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # -- counting -----------------------------------------------------------------------------

    def operator_writes(self) -> dict[tuple[str, str], int] | None:
        """Writes the operator's own client made (emulator only)."""
        return self.emulator.writes_by("operator") if self.emulated else None

    def kopf_writes(self) -> dict[tuple[str, str], int] | None:
        return self.emulator.writes_by("kopf") if self.emulated else None


@contextlib.asynccontextmanager
async def cluster_namespace(needed_kinds: tuple[str, ...], prefix: str) -> AsyncIterator[Harness]:
    """A harness in a fresh namespace of a real cluster, removed afterwards; skips when a CRD of
    ``needed_kinds`` is not installed (kubectl apply --server-side -f crds/ -f ../shared/crds/)."""
    import pytest

    kube = Kube(load_configuration(), user_agent="autoglm-e2e")
    for kind in needed_kinds:
        try:
            kube.list(KINDS[kind], None)
        except KubeApiError as e:
            kube.close()
            pytest.skip(
                f"the {kind} CRD is not installed (kubectl apply --server-side -f crds/ -f ../shared/crds/): {e}"
            )
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    h = Harness(kube=kube, namespace=namespace)
    try:
        yield h
    finally:
        await h.stop_operator()
        kube.delete(KINDS["Namespace"], None, namespace)
        kube.close()


def reconciles(result: str) -> float:
    return metrics.sample("autoglm_operator_reconciles_total", {"result": result})
