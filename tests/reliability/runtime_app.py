"""The runtime app over a tiny random GLM (built offline), for the runtime's reliability checks."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")


@functools.cache
def tiny_loaded() -> Any:
    import torch

    from autoglm_runtime.devmodels import build_tiny_glm
    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    torch.set_num_threads(1)
    path = build_tiny_glm(Path(tempfile.mkdtemp(prefix="rel-tiny-")))
    return load_model(RuntimeSettings(model=str(path))), path


def make_app(**overrides: Any) -> tuple[Any, Any]:
    """(app, engine) with the engine started on the tiny model; stop the engine after use."""
    from autoglm_runtime.app import create_app
    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner
    from autoglm_runtime.settings import RuntimeSettings

    loaded, path = tiny_loaded()
    settings = RuntimeSettings(model=str(path), served_model_name="tiny", **overrides)
    engine = Engine(EngineConfig.from_settings(settings))
    app = create_app(settings, engine)
    engine.start(ModelRunner(loaded.model, loaded.tokenizer), "tiny")
    return app, engine
