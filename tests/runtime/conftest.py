"""Shared fixtures for the runtime tests: models built offline once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GLM (hidden 128) with a chat template; deterministic (seed 0)."""
    from autoglm_runtime.devmodels import build_tiny_glm

    return build_tiny_glm(tmp_path_factory.mktemp("tiny-glm"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors (converted once from the packaged GGUF, then cached)."""
    from autoglm_runtime.devmodels import packaged_smollm2, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return packaged_smollm2()


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path) -> Any:
    """The tiny model loaded in fp32 (shared: engines only read it)."""
    import torch

    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    torch.set_num_threads(2)
    return load_model(RuntimeSettings(model=str(tiny_model_dir)))


@pytest.fixture
def make_engine(tiny_loaded: Any) -> Iterator[Any]:
    """Factory of started engines over the tiny model; stopped after the test."""
    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner

    engines: list[Engine] = []

    def make(runner: Any = None, **config: Any) -> Engine:
        engine = Engine(EngineConfig(**config))
        engine.start(runner or ModelRunner(tiny_loaded.model, tiny_loaded.tokenizer), tiny_loaded.name)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GLM-4V (the AutoGLM-Phone-9B architecture) of ~1 MB with its image processor."""
    from autoglm_runtime.devmodels import build_tiny_glm4v

    return build_tiny_glm4v(tmp_path_factory.mktemp("tiny-glm4v"))


@pytest.fixture(scope="session")
def tiny_vlm_loaded(tiny_vlm_dir: Path) -> Any:
    """The tiny GLM-4V loaded in fp32 (shared: engines only read it)."""
    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    return load_model(RuntimeSettings(model=str(tiny_vlm_dir), served_model_name="autoglm-phone-9b"))


def png_data_url(
    width: int, height: int, color: tuple[int, int, int] = (30, 120, 200), fmt: str = "PNG"
) -> str:
    """An image as the Open-AutoGLM client sends it: a base64 data URL."""
    import base64
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), color)
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width // 2, height // 2), fill=(250, 250, 250))
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    mime = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()
