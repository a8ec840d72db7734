"""Stopping ``autoglm-operator run`` is a clean exit even when kopf's shutdown ends with a
``TimeoutError`` (a Kubernetes API request still in flight when the stop came): exit code 0 and one
log line, not a traceback. A timeout without a stop request still propagates."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
from typing import Any

import kopf
import pytest

from autoglm_operator.commands import run as run_cmd


def args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return parser.parse_args(["--standalone", "-n", "ns", "--liveness-port", "0", "--metrics-port", "0"])


@pytest.fixture
def operator_that_times_out_on_stop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """kopf's operator replaced by one that, like kopf under a slow API server, waits for a stop
    (its flag or SIGTERM through the loop's signal handler) and then fails with TimeoutError."""
    seen: list[str] = []

    async def fake_operator(*, stop_flag: Any = None, **_: Any) -> None:
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[Any] = loop.create_future()
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGTERM, stopped.set_result, signal.SIGTERM)
        while not stopped.done() and not (stop_flag is not None and stop_flag.is_set()):
            await asyncio.sleep(0.01)
        seen.append("stopping")
        raise TimeoutError  # what kopf's task shutdown re-raised in the reliability run

    # Both names: kopf.run() calls the module's operator, the fix calls kopf.operator.
    monkeypatch.setattr(kopf, "operator", fake_operator)
    monkeypatch.setattr("kopf._core.reactor.running.operator", fake_operator)
    return seen


def test_stop_flag_during_a_timed_out_request_exits_zero(
    operator_that_times_out_on_stop: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(run_cmd.run(args(), run_cmd.Hooks(stop_flag=stop, configure_logging=False)))
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            result.append(exc)

    caplog.set_level(logging.INFO, "autoglm_operator")
    thread = threading.Thread(target=target)
    thread.start()
    stop.set()
    thread.join(10)
    assert result == [0]
    assert operator_that_times_out_on_stop == ["stopping"]
    assert "request still in flight at shutdown timed out" in caplog.text


def test_sigterm_during_a_timed_out_request_exits_zero(operator_that_times_out_on_stop: list[str]) -> None:
    assert threading.current_thread() is threading.main_thread()
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert run_cmd.run(args(), run_cmd.Hooks(configure_logging=False)) == 0
    finally:
        timer.cancel()
    assert operator_that_times_out_on_stop == ["stopping"]


def test_timeout_without_a_stop_request_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing_operator(**_: Any) -> None:
        raise TimeoutError("login timed out")

    monkeypatch.setattr(kopf, "operator", failing_operator)
    monkeypatch.setattr("kopf._core.reactor.running.operator", failing_operator)
    with pytest.raises(TimeoutError, match="login timed out"):
        run_cmd.run(args(), run_cmd.Hooks(stop_flag=threading.Event(), configure_logging=False))
