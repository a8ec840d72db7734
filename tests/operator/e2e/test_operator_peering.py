"""Leader election between two real ``autoglm-operator run`` processes (the chart's two replicas).

Each replica is a separate process started with the chart's arguments (``--peering NAME``, one
``POD_ID`` each) against the emulated API server, which stores kopf's peering objects like any
custom resource. What is checked:

- exactly one replica writes children while both run (no duplicate applies);
- after ``SIGKILL`` of the active one (no clean goodbye in the peering object), the other takes over
  and reconciles a CR created after the kill within the documented bound (the peering lifetime plus
  a few seconds to resume its watches);
- the same in namespaced mode (``--namespace``: a ``KopfPeering`` in the watched namespace).

Before the fix both replicas had kopf's default priority 0 and paused each other for ever: these
tests then time out waiting for the first Deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoglm_operator.kube import Kind

from .emulator import ApiEmulator
from .harness import Harness

PEERING = "autoglm-operator"
LIFETIME = 6  # seconds; the chart's default is 15 (docs/operator.md)
# Takeover bound: the dead leader's keep-alive expires (<= LIFETIME), the standby re-reads the
# peering, resumes, re-lists and reconciles. Generous for a shared, loaded CI machine.
TAKEOVER_BOUND = LIFETIME + 20
STARTUP = 60.0  # a cold Python process importing kopf, kubernetes and pydantic on a busy machine

SPEC = {
    "model": {"source": "hf://THUDM/glm-4-9b-chat"},
    "quantization": "int8",
    "resources": {"gpu": {"product": "L4"}},
}
CLUSTER_PEERING = Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False)
NAMESPACED_PEERING = Kind("kopf.dev/v1", "KopfPeering", "kopfpeerings")


class Replica:
    """One operator process, as one pod of the chart's Deployment."""

    def __init__(
        self,
        pod: str,
        log_dir: Path,
        args: list[str],
        *,
        peering: bool = True,
        kubeconfig: Path | None = None,
    ) -> None:
        """``args`` after ``run``; ``peering`` adds this module's peering flags (the cluster tests
        pass the chart's own arguments instead)."""
        self.pod = pod
        self.log = log_dir / f"{pod}.log"
        env = {**os.environ, "POD_ID": pod, "PYTHONUNBUFFERED": "1"}
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        extra = (
            [
                f"--peering={PEERING}",
                f"--peering-lifetime={LIFETIME}",
                "--liveness-port=0",
                "--metrics-port=0",
                "--log-format=text",
            ]
            if peering
            else []
        )
        argv = [sys.executable, "-m", "autoglm_operator.cli", "run", *args, *extra]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def agent(self) -> str:
        return f"autoglm-operator ({self.pod})"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@contextlib.contextmanager
def running(replicas: list[Replica]) -> Iterator[list[Replica]]:
    """Stop every replica at the end; on a failure print the end of each one's log first."""
    try:
        yield replicas
    except BaseException:
        for r in replicas:
            print(f"--- {r.pod} ---\n{r.tail()}")
        raise
    finally:
        for r in replicas:
            r.stop()


def child_applies(emulator: ApiEmulator, replica: Replica) -> dict[tuple[str, str], int]:
    return {
        (verb, target): n
        for (agent, verb, target), n in emulator.writes_by_agent.items()
        if agent == replica.agent
        and verb in ("apply", "create", "patch", "delete")
        and n
        and target.split("/")[0]
        in {"configmaps", "services", "deployments", "horizontalpodautoscalers", "poddisruptionbudgets"}
    }


async def _peering_members(harness: Harness, kind: Kind, namespace: str | None) -> dict[str, Any]:
    obj = await harness.call(harness.kube.get, kind, namespace, PEERING)
    return dict((obj or {}).get("status") or {})


async def _scenario(harness: Harness, tmp_path: Path, *, namespaced: bool) -> None:
    kind = NAMESPACED_PEERING if namespaced else CLUSTER_PEERING
    peering_ns = harness.namespace if namespaced else None
    body = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": PEERING}}
    if peering_ns:
        body["metadata"]["namespace"] = peering_ns
    await harness.call(harness.kube._call, "POST", kind.path(peering_ns), body=body)
    scope = [f"--namespace={harness.namespace}"] if namespaced else ["--all-namespaces"]
    if namespaced:  # kopf watches the Namespace objects of the namespaces it serves
        await harness.call(
            harness.kube.create,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": harness.namespace}},
        )

    older = Replica("operator-a", tmp_path, scope)
    replicas = [older]
    with running(replicas):
        await harness.eventually(
            lambda: _has_member(harness, kind, peering_ns, older.pod), "replica a in the peering", STARTUP
        )
        await harness.create_cr("first", SPEC)
        await harness.eventually(lambda: harness.get("Deployment", "first"), "first Deployment", STARTUP)

        younger = Replica("operator-b", tmp_path, scope)
        replicas.append(younger)
        await harness.eventually(
            lambda: _has_member(harness, kind, peering_ns, younger.pod), "replica b in the peering", STARTUP
        )
        members = await _peering_members(harness, kind, peering_ns)
        assert members[older.pod]["priority"] > members[younger.pod]["priority"], members
        await asyncio.sleep(1.0)  # b has read the peering and paused
        await harness.create_cr("second", SPEC)
        await harness.eventually(lambda: harness.get("Deployment", "second"), "second Deployment")
        await asyncio.sleep(2.0)  # room for a (wrong) duplicate apply by b

        by_a, by_b = child_applies(harness.emulator, older), child_applies(harness.emulator, younger)
        assert by_b == {}, f"the standby wrote children: {by_b}\n{younger.tail()}"
        # One apply per child of each CR: nobody re-applied what the other wrote.
        assert by_a == {
            ("apply", "configmaps"): 2,
            ("apply", "services"): 2,
            ("apply", "deployments"): 2,
        }, by_a

        older.kill()
        killed = time.monotonic()
        await harness.create_cr("third", SPEC)
        await harness.eventually(
            lambda: harness.get("Deployment", "third"),
            f"the standby to take over within {TAKEOVER_BOUND}s of the SIGKILL",
            TAKEOVER_BOUND,
        )
        took = time.monotonic() - killed
        assert child_applies(harness.emulator, younger).get(("apply", "deployments")) == 1
        print(f"takeover after SIGKILL: {took:.1f}s (lifetime {LIFETIME}s)")


async def _has_member(harness: Harness, kind: Kind, namespace: str | None, pod: str) -> bool:
    return pod in await _peering_members(harness, kind, namespace)


@pytest.mark.timeout(240)
async def test_one_replica_reconciles_and_the_other_takes_over_after_sigkill(
    harness: Harness, tmp_path: Path
) -> None:
    await _scenario(harness, tmp_path, namespaced=False)


@pytest.mark.timeout(240)
async def test_namespaced_peering_elects_one_replica_too(harness: Harness, tmp_path: Path) -> None:
    await _scenario(harness, tmp_path, namespaced=True)
