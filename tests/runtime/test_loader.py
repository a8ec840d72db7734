"""Loading in every mode on the CPU, and the clear errors a user gets for broken models."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from autoglm_runtime.loader import CorruptWeightsError, ModelLoadError, ModelNotFoundError, load_model
from autoglm_runtime.settings import RuntimeSettings

pytestmark = pytest.mark.slow


def generate(loaded: Any, n: int = 4) -> list[int]:
    import torch

    inputs = loaded.tokenizer("Hello world", return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_every_quantization_loads_generates_and_shrinks(tiny_model_dir: Path) -> None:
    footprints = {}
    for mode in ("none", "bf16", "fp16", "int8", "nf4", "fp4"):
        loaded = load_model(
            RuntimeSettings(model=str(tiny_model_dir), quantization=mode, compute_dtype="fp32")
        )
        assert len(generate(loaded)) == 4, mode
        assert not any(p.device.type == "meta" for p in loaded.model.parameters())
        footprints[mode] = loaded.memory_bytes
    assert footprints["nf4"] < footprints["int8"] < footprints["bf16"] < footprints["none"]
    assert footprints["fp4"] == footprints["nf4"]
    assert footprints["fp16"] == footprints["bf16"]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(RuntimeSettings(model=str(tmp_path / "nowhere")))


def test_truncated_safetensors_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError, match=r"model\.safetensors.*fetch the model again"):
        load_model(RuntimeSettings(model=str(broken)))


def test_broken_config_is_a_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "badconfig")
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(RuntimeSettings(model=str(broken)))


def test_tokenizer_without_chat_template_gets_a_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from autoglm_runtime.devmodels import build_tiny_glm

    folder = build_tiny_glm(tmp_path / "plain", chat_template=False)
    with caplog.at_level(logging.WARNING, logger="autoglm_runtime.loader"):
        loaded = load_model(RuntimeSettings(model=str(folder), warmup=False))
    assert "no chat template" in caplog.text
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("assistant\n")


def test_tiny_model_is_deterministic(tmp_path: Path) -> None:
    from autoglm_runtime.devmodels import build_tiny_glm

    a = build_tiny_glm(tmp_path / "a", seed=3)
    b = build_tiny_glm(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_warm_up_leaves_out_the_token_type_ids_some_tokenizers_return(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """GLM's generate refuses token_type_ids ("model_kwargs are not used by the model"), which some
    tokenizers return (devmodels' under transformers 4.x): the warm-up must not pass them on."""
    import json

    model_dir = tmp_path / "ttids"
    shutil.copytree(tiny_model_dir, model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    config_path.write_text(json.dumps(config))

    loaded = load_model(RuntimeSettings(model=str(model_dir), quantization="none"))  # warm-up on
    assert "token_type_ids" in loaded.tokenizer("Hello", return_tensors="pt")
    assert loaded.load_seconds > 0
