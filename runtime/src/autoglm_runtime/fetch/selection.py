"""Which files of a revision inference needs (fnmatch globs; ``*`` also matches ``/``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

# Config, weights, tokenizer (fast, sentencepiece, tiktoken, BPE vocab/merges) and chat templates.
DEFAULT_ALLOW = (
    "*.json",
    "*.safetensors",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",
)
REMOTE_CODE = ("*.py",)
# Only when the revision has no safetensors weights: transformers then loads these pickles.
PICKLE_WEIGHTS = ("pytorch_model*.bin",)
# Duplicates of the weights in other formats (Meta/Mistral originals, GGUF, ONNX, TF/Flax), never loaded.
DEFAULT_IGNORE = (
    "original/*",
    "consolidated*",
    "*.gguf",
    "onnx/*",
    "*.onnx",
    "*.msgpack",
    "*.h5",
    "*.ot",
    "*.tflite",
    ".git*",
)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def select_files(
    names: Sequence[str],
    *,
    allow: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    trust_remote_code: bool = False,
) -> list[str]:
    """The names to fetch. Explicit ``allow`` patterns replace the defaults (and their default ignores)."""
    user_ignore = tuple(ignore or ())
    if allow:
        return sorted(n for n in names if _matches(n, allow) and not _matches(n, user_ignore))
    skip = DEFAULT_IGNORE + user_ignore
    candidates = [n for n in names if not _matches(n, skip)]
    patterns = DEFAULT_ALLOW + (REMOTE_CODE if trust_remote_code else ())
    if not any(fnmatchcase(n, "*.safetensors") for n in candidates):
        patterns += PICKLE_WEIGHTS
    return sorted(n for n in candidates if _matches(n, patterns))
