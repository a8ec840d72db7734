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
