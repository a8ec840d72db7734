"""Pure parts of the fetch command: source parsing, cache folder, file selection, Retry-After."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoglm_runtime.fetch.layout import HUB_ENDPOINT, Source, model_dir, parse_source
from autoglm_runtime.fetch.retry import parse_retry_after
from autoglm_runtime.fetch.selection import select_files
from tests.runtime.fetchrepo import NEEDED, REPO_FILES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://zai-org/glm-4-9b-chat", Source(HUB_ENDPOINT, "zai-org/glm-4-9b-chat")),
        ("zai-org/glm-4-9b-chat", Source(HUB_ENDPOINT, "zai-org/glm-4-9b-chat")),
        ("gpt2", Source(HUB_ENDPOINT, "gpt2")),
        (
            "https://hf-mirror.com/zai-org/glm-4-9b-chat",
            Source("https://hf-mirror.com", "zai-org/glm-4-9b-chat"),
        ),
        (
            "https://art.example:8443/api/huggingfaceml/hf/zai-org/glm-4-9b-chat/",
            Source("https://art.example:8443/api/huggingfaceml/hf", "zai-org/glm-4-9b-chat"),
        ),
    ],
)
def test_sources(text: str, expected: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert parse_source(text) == expected


def test_hf_endpoint_applies_to_hub_ids_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.internal/")
    assert parse_source("hf://a/b").endpoint == "https://mirror.internal"
    assert parse_source("https://other.example/a/b").endpoint == "https://other.example"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pvc://claim/path", "nothing to fetch"),
        ("s3://bucket/a/b", "unsupported scheme"),
        ("https://mirror.example/only-one", "base URL followed by 'org/name'"),
        ("hf://a--b/c", "not a hub repo id"),
        ("hf://a/b/c", "not a hub repo id"),
        ("org/na me", "not a hub repo id"),
    ],
)
def test_bad_sources_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_source(text)


def test_model_dir_is_deterministic_and_needs_no_io(tmp_path: Path) -> None:
    assert model_dir("/models", "hf://zai-org/AutoGLM-Phone-9B", "abc123") == Path(
        "/models/zai-org--AutoGLM-Phone-9B/abc123"
    )
    assert model_dir("/models", "https://m.example/p/zai-org/x", "refs/pr/3") == Path(
        "/models/zai-org--x/refs--pr--3"
    )
    for bad in ("../x", "a/../b", "", "/abs", "a b"):
        with pytest.raises(ValueError, match="revision"):
            model_dir("/models", "a/b", bad)


def test_default_selection_is_what_inference_needs() -> None:
    assert select_files(list(REPO_FILES)) == sorted(NEEDED)
    with_code = select_files(list(REPO_FILES), trust_remote_code=True)
    assert "modeling_glm.py" in with_code
    assert select_files(list(REPO_FILES), ignore=["*.jinja"]) == sorted(set(NEEDED) - {"chat_template.jinja"})
    assert select_files(
        ["vocab.txt", "merges.txt", "tokenizer.model", "qwen.tiktoken", "sub/config.json"]
    ) == [
        "merges.txt",
        "qwen.tiktoken",
        "sub/config.json",
        "tokenizer.model",
        "vocab.txt",
    ]


def test_pickles_only_without_safetensors() -> None:
    names = ["config.json", "pytorch_model-00001-of-00002.bin", "training_args.bin", "optimizer.pt"]
    assert select_files(names) == ["config.json", "pytorch_model-00001-of-00002.bin"]
    assert select_files([*names, "model.safetensors"]) == ["config.json", "model.safetensors"]


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    far = parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT")
    assert far is not None
    assert far > 1e9


def test_layout_import_stays_light_for_the_operator() -> None:
    code = (
        "import sys, autoglm_runtime.fetch.layout, autoglm_runtime.fetch\n"
        "heavy = [m for m in ('torch', 'httpx', 'huggingface_hub', 'tenacity', 'filelock') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""
