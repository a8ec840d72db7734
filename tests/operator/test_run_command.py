"""``autoglm-operator run`` flags and their AUTOGLM_OPERATOR_* variables (no cluster needed)."""

from __future__ import annotations

import argparse
import asyncio
import inspect

import pytest

from autoglm_operator.commands import run as run_cmd


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_watch_everything_with_peering() -> None:
    registry, kwargs = run_cmd.build(_parse([]))
    assert kwargs["clusterwide"] is True
    assert kwargs["namespaces"] == []
    assert kwargs["standalone"] is False
    assert kwargs["peering_name"] == "autoglm-operator"
    assert kwargs["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
    assert kwargs["registry"] is registry


def test_flags() -> None:
    args = _parse(
        [
            "-n",
            "ml",
            "--namespace",
            "serving",
            "--standalone",
            "--liveness-port",
            "0",
            "--resync-seconds",
            "5",
        ]
    )
    _, kwargs = run_cmd.build(args)
    assert kwargs["namespaces"] == ["ml", "serving"]
    assert kwargs["clusterwide"] is False
    assert kwargs["standalone"] is True
    assert kwargs["peering_name"] is None
    assert kwargs["liveness_endpoint"] is None


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_OPERATOR_NAMESPACE", "a,b")
    monkeypatch.setenv("AUTOGLM_OPERATOR_PEERING", "blue")
    monkeypatch.setenv("AUTOGLM_OPERATOR_METRICS_PORT", "9999")
    monkeypatch.setenv("AUTOGLM_OPERATOR_LOG_FORMAT", "text")
    args = _parse([])
    _, kwargs = run_cmd.build(args)
    assert kwargs["namespaces"] == ["a", "b"]
    assert kwargs["peering_name"] == "blue"
    assert args.metrics_port == 9999
    assert args.log_format == "text"


def test_bad_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["--metrics-port", "70000"])
    assert "--metrics-port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--standalone", "--peering", "x"])


def test_namespace_and_all_namespaces_conflict() -> None:
    with pytest.raises(SystemExit, match="either --namespace or --all-namespaces"):
        run_cmd.build(_parse(["-n", "ml", "-A"]))


def test_no_finalizer_requiring_handlers_are_registered() -> None:
    registry, _ = run_cmd.build(_parse([]))
    spawning = registry._spawning.get_all_handlers()
    changing = registry._changing.get_all_handlers()
    assert [h.id for h in spawning] == ["resync"]
    assert not any(h.requires_finalizer for h in [*spawning, *changing])


def test_leader_election_priority_and_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    # Distinct priorities per replica (kopf pauses every replica on a tie); the older one is higher.
    older = run_cmd.start_time_priority(now=1_800_000_000.000)
    younger = run_cmd.start_time_priority(now=1_800_000_000.001)
    assert older > younger > 0
    assert older < 2**53  # exact in every JSON reader of the peering object
    _, kwargs = run_cmd.build(_parse([]))
    assert kwargs["priority"] > 0
    _, second = run_cmd.build(_parse([]))
    assert second["priority"] != kwargs["priority"]
    _, kwargs = run_cmd.build(_parse(["--priority", "7"]))
    assert kwargs["priority"] == 7
    monkeypatch.setenv("AUTOGLM_OPERATOR_PRIORITY", "9")
    assert run_cmd.build(_parse([]))[1]["priority"] == 9
    assert run_cmd.build(_parse(["--standalone"]))[1]["priority"] is None


def test_peering_lifetime_reaches_kopf_settings() -> None:
    import kopf

    registry, _ = run_cmd.build(_parse(["--peering-lifetime", "20"]))
    settings = kopf.OperatorSettings()
    for handler in registry._activities.get_all_handlers():
        if handler.id == "configure":
            result = handler.fn(settings=settings, logger=None)
            if inspect.iscoroutine(result):  # the handler starts background tasks: it is async
                asyncio.run(result)
    assert settings.peering.lifetime == 20
    assert settings.peering.mandatory is True
    with pytest.raises(SystemExit):
        _parse(["--peering-lifetime", "2"])
