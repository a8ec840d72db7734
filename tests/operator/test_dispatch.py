"""When reconciles run (dispatch.py): a child's successive status updates fold into one reconcile,
and news that cannot wait (a new or changed CR, a deleted or drifted child) does not wait for them."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from autoglm_operator import dispatch
from autoglm_operator.dispatch import OperatorConfig, State, request
from autoglm_operator.reconcile import Outcome

LOG = logging.getLogger("test")
CR = {
    "apiVersion": "autoglm.io/v1alpha1",
    "kind": "AutoGLMDeployment",
    "metadata": {"name": "a", "namespace": "ml", "uid": "u1", "generation": 1, "resourceVersion": "1"},
    "spec": {},
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each reconcile records the thread pool it ran on."""
    seen: list[str] = []

    def fake(body: Any, *args: Any, **kwargs: Any) -> Outcome:
        seen.append(threading.current_thread().name.split("_")[0])
        return Outcome(result="unchanged")

    monkeypatch.setattr(dispatch, "reconcile", fake)
    return seen


def _state(follow_delay: float) -> State:
    state = State(OperatorConfig(follow_delay=follow_delay, kube_factory=lambda: None))  # type: ignore[arg-type,return-value]
    assert state.cache.observe_cr(CR)
    return state


async def _settle(state: State) -> None:
    while state.tasks:
        await asyncio.gather(*list(state.tasks))


async def test_successive_status_updates_of_children_become_one_reconcile(calls: list[str]) -> None:
    state = _state(follow_delay=0.3)
    for _ in range(4):  # e.g. the controller writing a new Deployment's status, then the HPA's
        request(state, "ml", "a", "u1", LOG, [], urgent=False)
        await asyncio.sleep(0.05)
    await _settle(state)
    assert calls == ["reconcile-background"]
    state.close()


async def test_urgent_news_cuts_the_wait_and_takes_the_fresh_threads(calls: list[str]) -> None:
    state = _state(follow_delay=30.0)
    started = time.monotonic()
    request(state, "ml", "a", "u1", LOG, [], urgent=False)
    await asyncio.sleep(0.05)
    request(state, "ml", "a", "u1", LOG, [], urgent=True)  # e.g. the CR's spec changed
    await _settle(state)
    assert time.monotonic() - started < 5, "the urgent request waited out the follower's delay"
    assert calls == ["reconcile-fresh"]
    state.close()


async def test_a_new_cr_never_waits(calls: list[str]) -> None:
    state = _state(follow_delay=30.0)
    started = time.monotonic()
    request(state, "ml", "a", "u1", LOG, [], urgent=True)
    await _settle(state)
    assert time.monotonic() - started < 5
    assert calls == ["reconcile-fresh"]
    state.close()
