"""Fixtures for the benchmark tools' tests (no benchmark runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir_for_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random GLM's folder (its tokenizer is what the stub server loads)."""
    from autoglm_runtime.devmodels import build_tiny_glm

    return build_tiny_glm(tmp_path_factory.mktemp("tiny-glm"))
