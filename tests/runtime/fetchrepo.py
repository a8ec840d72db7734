"""A tiny hub-shaped repo for the fetch tests, and a helper that runs ``autoglm-runtime fetch`` in-process."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoglm_runtime.cli import main

_rnd = random.Random(6)
SHARD1 = _rnd.randbytes(1_500_000)
SHARD2 = _rnd.randbytes(700_000)

NEEDED = {
    "config.json": json.dumps({"model_type": "glm", "hidden_size": 64}).encode(),
    "generation_config.json": b'{"eos_token_id": 2}',
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode(),
    "tokenizer_config.json": b'{"tokenizer_class": "PreTrainedTokenizerFast"}',
    "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",
    "model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    ).encode(),
    "model-00001-of-00002.safetensors": SHARD1,
    "model-00002-of-00002.safetensors": SHARD2,
}
NOT_NEEDED = {
    "pytorch_model.bin": b"\x80\x02pickle" * 100,
    "model.gguf": b"GGUF" * 100,
    "README.md": b"# tiny",
    ".gitattributes": b"*.safetensors filter=lfs",
    "modeling_glm.py": b"# remote code",
    "logo.png": b"\x89PNG" * 10,
    "original/consolidated.00.pth": b"pth" * 100,
}
REPO_FILES = {**NEEDED, **NOT_NEEDED}
SHARD = "model-00001-of-00002.safetensors"

# Small backoff and timeouts keep every failure test well under a second or two.
FAST = [
    "--log-format",
    "text",
    "--backoff-initial",
    "0.01",
    "--backoff-max",
    "0.05",
    "--connect-timeout",
    "2",
    "--read-timeout",
    "2",
    "--max-attempts",
    "3",
]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def path(self) -> Path:
        return Path(self.out.strip().splitlines()[-1])


class Fetcher:
    def __init__(self, capsys: pytest.CaptureFixture[str], cache: Path) -> None:
        self.capsys, self.cache = capsys, cache

    def __call__(self, source: str, *extra: str) -> Result:
        self.capsys.readouterr()
        code = main(["fetch", "--model", source, "--cache-dir", str(self.cache), *FAST, *extra])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)
