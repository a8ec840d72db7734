"""Renamed settings keep their earlier env var and flag, deprecated: each reaches the same setting
and where it is used (the engine's config, the image fetcher), with one warning naming the new name; the new name wins where both are set."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from autoglm_runtime.cli import main
from autoglm_runtime.serve import add_arguments, flag_name, settings_from_args
from autoglm_runtime.serving_settings import EngineSettings, renamed
from autoglm_runtime.settings import RuntimeSettings, env_name

# old name → (new name, a value other than the default). The three renamed in the settings rework.
RENAMED: dict[str, tuple[str, Any]] = {
    "request_timeout_s": ("request_timeout_seconds", 42.0),
    "image_url_timeout_s": ("image_url_timeout_seconds", 42.0),
    "memory_headroom_percent": ("headroom_percent", 20),
}


def old_env(old: str) -> str:
    return "AUTOGLM_" + old.upper()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("AUTOGLM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AUTOGLM_MODEL", "m")


def parse(argv: list[str]) -> RuntimeSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


def used_value(settings: RuntimeSettings, name: str) -> Any:
    """The setting where the runtime uses it: the engine's config, or the remote image fetcher's."""
    if name in EngineSettings.model_fields:
        from autoglm_runtime.engine import EngineConfig

        return getattr(EngineConfig.from_settings(settings), name)
    from autoglm_runtime.vision import RemoteImages

    assert name == "image_url_timeout_seconds"
    return RemoteImages.from_settings(settings).timeout_s


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_declaration_carries_the_earlier_names() -> None:
    assert renamed() == {old: new for old, (new, _) in RENAMED.items()}
    assert renamed(RuntimeSettings) == renamed()


@pytest.mark.parametrize("old", RENAMED)
def test_the_old_env_var_reaches_the_setting_and_its_use(
    old: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    new, value = RENAMED[old]
    monkeypatch.setenv(old_env(old), str(value))
    with caplog.at_level(logging.WARNING):
        settings = parse([])
    assert getattr(settings, new) == value
    assert used_value(settings, new) == value
    assert warnings(caplog) == [f"{old_env(old)} is deprecated: use {env_name(new)}"]


@pytest.mark.parametrize("old", RENAMED)
def test_the_old_flag_reaches_the_setting_and_its_use(old: str, caplog: pytest.LogCaptureFixture) -> None:
    new, value = RENAMED[old]
    with caplog.at_level(logging.WARNING):
        settings = parse([flag_name(old), str(value)])
    assert getattr(settings, new) == value
    assert used_value(settings, new) == value
    assert warnings(caplog) == [f"{flag_name(old)} is deprecated: use {flag_name(new)}"]


@pytest.mark.parametrize("old", RENAMED)
def test_the_new_name_wins_where_both_are_set(
    old: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    new, value = RENAMED[old]
    monkeypatch.setenv(old_env(old), str(value))
    monkeypatch.setenv(env_name(new), str(value + 1))
    with caplog.at_level(logging.WARNING):
        assert getattr(parse([]), new) == value + 1
        assert getattr(parse([flag_name(old), str(value), flag_name(new), str(value + 2)]), new) == value + 2
    assert set(warnings(caplog)) == {
        f"{old_env(old)} is deprecated and ignored: {env_name(new)} is set too and wins",
        f"{flag_name(old)} is deprecated and ignored: {flag_name(new)} is given too and wins",
    }


def test_an_old_flag_still_wins_over_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_REQUEST_TIMEOUT_SECONDS", "7")
    assert parse(["--request-timeout-s", "42"]).request_timeout_seconds == 42


def test_without_the_old_names_nothing_is_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        settings = parse(["--request-timeout-seconds", "42"])
    assert settings.request_timeout_seconds == 42
    assert warnings(caplog) == []


def test_serve_logs_the_warning_in_the_configured_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve` reads its settings before logging is configured: the warning is held until then."""
    argv = ["serve", "--model", str(tmp_path / "none"), "--log-format", "json", "--request-timeout-s", "5"]
    assert main(argv) == 1  # the model folder does not exist: exits after the settings are read
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert any("use --request-timeout-seconds" in line.get("message", "") for line in lines), lines
