"""`autoglm-runtime serve` flags: generated from RuntimeSettings, env fallback, flags win, clear errors."""

from __future__ import annotations

import argparse

import pytest

from autoglm_runtime.cli import main
from autoglm_runtime.serve import add_arguments, flag_name, settings_from_args
from autoglm_runtime.settings import RuntimeSettings


def parse(argv: list[str]) -> RuntimeSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


def test_every_setting_is_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for field in RuntimeSettings.model_fields:
        assert flag_name(field) in flags


def test_env_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_MODEL", "/models/a")
    monkeypatch.setenv("AUTOGLM_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("AUTOGLM_QUANTIZATION", "int8")
    monkeypatch.setenv("AUTOGLM_WARMUP", "false")
    settings = parse(["--max-batch-size", "16", "--no-double-quant"])
    assert settings.model == "/models/a"
    assert settings.quantization == "int8"
    assert settings.max_batch_size == 16
    assert settings.warmup is False
    assert settings.double_quant is False


def test_bad_values_name_the_flag_and_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOGLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="--model / AUTOGLM_MODEL: is required"):
        parse([])
    with pytest.raises(ValueError, match="--gpu-memory-percent / AUTOGLM_GPU_MEMORY_PERCENT"):
        parse(["--model", "m", "--gpu-memory-percent", "500"])


def test_missing_model_folder_exits_1_with_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", str(tmp_path / "none"), "--log-format", "text"]) == 1
    err = capsys.readouterr().err
    assert "model folder" in err
    assert "does not exist" in err
    assert "Traceback" not in err


def test_invalid_flag_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "m", "--port", "http"]) == 2
    assert "--port / AUTOGLM_PORT" in capsys.readouterr().err
