"""Built-in catalog of model configs, so the common GLM deployments need no network to be estimated.

The values are the models' published ``config.json`` entries (only the keys the estimator reads);
:func:`lookup_model` parses them with the same code as a fetched config. Names match
case-insensitively, with or without ``hf://``; a mirror URL ``https://host/.../org/name`` and a
``pvc://claim/.../org/name`` path match on their last two segments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from autoglm_operator.memory.shapes import shape_from_config
from autoglm_operator.memory.types import ModelShape

_GLM4_9B_CHATGLM: dict[str, Any] = {  # THUDM remote-code format (model_type chatglm)
    "model_type": "chatglm",
    "hidden_size": 4096,
    "num_layers": 40,
    "num_attention_heads": 32,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "kv_channels": 128,
    "ffn_hidden_size": 13696,
    "padded_vocab_size": 151552,
    "add_qkv_bias": True,
    "add_bias_linear": False,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
_GLM4_9B_HF: dict[str, Any] = {  # transformers-native conversion (model_type glm)
    "model_type": "glm",
    "hidden_size": 4096,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "intermediate_size": 13696,
    "vocab_size": 151552,
    "attention_bias": True,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
_GLM41V_9B: dict[str, Any] = {  # GLM-4.1V-9B: GLM-4-9B-shaped language model + a 0.9B vision tower
    "model_type": "glm4v",
    "text_config": {
        "model_type": "glm4v_text",
        "hidden_size": 4096,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "intermediate_size": 13696,
        "vocab_size": 151552,
        "max_position_embeddings": 65536,
        "torch_dtype": "bfloat16",
    },
    "vision_config": {
        "model_type": "glm4v_vision",
        "hidden_size": 1536,
        "depth": 24,
        "num_heads": 12,
        "intermediate_size": 13696,
        "out_hidden_size": 4096,
        "patch_size": 14,
        "image_size": 336,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
        "attention_bias": False,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

# name -> (config.json subset, aliases)
_MODELS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "THUDM/glm-4-9b-chat": (
        {**_GLM4_9B_CHATGLM, "seq_length": 131072},
        ("zai-org/glm-4-9b-chat",),
    ),
    "THUDM/glm-4-9b": ({**_GLM4_9B_CHATGLM, "seq_length": 8192}, ("zai-org/glm-4-9b",)),
    "THUDM/glm-4-9b-chat-hf": (
        {**_GLM4_9B_HF, "max_position_embeddings": 131072},
        ("zai-org/glm-4-9b-chat-hf",),
    ),
    "THUDM/glm-4-9b-hf": ({**_GLM4_9B_HF, "max_position_embeddings": 8192}, ("zai-org/glm-4-9b-hf",)),
    "THUDM/GLM-4-9B-0414": (
        {**_GLM4_9B_HF, "model_type": "glm4", "max_position_embeddings": 32768},
        ("zai-org/GLM-4-9B-0414",),
    ),
    "zai-org/GLM-4.1V-9B-Thinking": (
        _GLM41V_9B,
        ("THUDM/GLM-4.1V-9B-Thinking", "zai-org/GLM-4.1V-9B-Base", "THUDM/GLM-4.1V-9B-Base"),
    ),
    "zai-org/AutoGLM-Phone-9B": (_GLM41V_9B, ("zai-org/AutoGLM-Phone-9B-Multilingual",)),
    "meta-llama/Llama-3.1-8B-Instruct": (
        {
            "model_type": "llama",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        ("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B"),
    ),
    "Qwen/Qwen2.5-7B-Instruct": (
        {
            "model_type": "qwen2",
            "hidden_size": 3584,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "intermediate_size": 18944,
            "vocab_size": 152064,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        ("Qwen/Qwen2.5-7B",),
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": (
        {
            "model_type": "mistral",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 14336,
            "vocab_size": 32768,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        ("mistralai/Mistral-7B-v0.3",),
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": (
        {
            "model_type": "llama",
            "hidden_size": 576,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "intermediate_size": 1536,
            "vocab_size": 49152,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
        },
        ("HuggingFaceTB/SmolLM2-135M",),
    ),
}

_INDEX: dict[str, str] = {
    key.lower(): name for name, (_, aliases) in _MODELS.items() for key in (name, *aliases)
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def repo_id(source: str) -> str | None:
    """``org/name`` of a model source: ``hf://org/name``, ``org/name``, ``https://host/.../org/name``,
    or ``pvc://claim/.../org/name``; None when the source names no repository."""
    text = source.strip().rstrip("/")
    if text.lower().startswith("hf://"):
        text = text[5:]
    elif "://" in text:
        scheme, _, rest = text.partition("://")
        parts = [p for p in rest.split("/") if p]
        # https: drop the host; pvc: drop the claim; what remains must end in org/name.
        tail = parts[1:]
        if scheme.lower() not in {"https", "http", "pvc"} or len(tail) < 2:
            return None
        text = "/".join(tail[-2:])
    return text if _HUB_ID.match(text) else None


def catalog_names() -> list[str]:
    """Canonical names of the built-in models (for error messages and docs)."""
    return list(_MODELS)


def catalog_config(source: str) -> tuple[str, Mapping[str, Any]] | None:
    """(canonical name, config subset) of a catalog model, or None."""
    repo = repo_id(source)
    name = _INDEX.get(repo.lower()) if repo else None
    return (name, _MODELS[name][0]) if name else None


def lookup_model(source: str) -> ModelShape | None:
    """The built-in shape of ``source`` (any accepted spelling), or None when it is not in the catalog."""
    found = catalog_config(source)
    if found is None:
        return None
    name, config = found
    return shape_from_config(config, name, source="catalog")
