"""A model's shape (parameter count, KV-cache geometry) from its ``config.json`` dict, without torch.

Handles the config dialects the operator meets:

- Hugging Face decoder configs (``llama``, ``mistral``, ``qwen2``, ``glm``, ``glm4``, ...):
  ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads`` (missing = heads),
  ``head_dim`` (missing or null = hidden / heads), ``intermediate_size``, ``vocab_size``;
- THUDM's remote-code ``chatglm`` configs (GLM-4-9B before the ``-hf`` conversion): ``num_layers``,
  ``multi_query_group_num``, ``kv_channels``, ``ffn_hidden_size``, ``padded_vocab_size``, ``seq_length``;
- multimodal configs with a nested ``text_config`` (GLM-4.1V, AutoGLM-Phone): the language model is
  read from it, and a ``glm4v`` vision tower is counted from ``vision_config``.

The count is exact for these architectures (the tests compare it with transformers' own modules):
every decoder layer is attention (q, k, v, o) plus a gated MLP (gate, up, down) plus RMSNorms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoglm_operator.memory.errors import MemoryFitError
from autoglm_operator.memory.types import ModelShape

# Families whose attention projections carry a q/k/v bias even though no config key says so.
_QKV_BIAS_ALWAYS = {"qwen2", "qwen2_vl", "qwen2_5_vl_text", "glm4v_text", "glm4v"}
# Families with two extra norms per layer (post-attention and post-MLP "sandwich" norms).
_FOUR_NORMS = {"glm4", "glm4v_text", "glm4v"}
# Mixture-of-experts keys: the dense formula below would be wrong, so such configs need spec hints.
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class _Reader:
    """Reads keys from the language-model config, falling back to the top level, naming what is missing."""

    def __init__(self, config: Mapping[str, Any], name: str) -> None:
        text = config.get("text_config")
        self.text: Mapping[str, Any] = text if isinstance(text, Mapping) else {}
        self.top = config
        self.name = name or "the model"

    def get(self, *keys: str, default: Any = None) -> Any:
        for key in keys:
            for layer in (self.text, self.top):
                value = layer.get(key)
                if value is not None:
                    return value
        return default

    def require(self, *keys: str) -> int:
        value = self.get(*keys)
        if value is None:
            where = " (or text_config)" if self.text else ""
            raise MemoryFitError(
                "spec.model.shape",
                f"config.json of {self.name} has no {' / '.join(repr(k) for k in keys)}{where}; "
                "the estimator needs it (or set spec.model.shape hints)",
            )
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise MemoryFitError(
                "spec.model.shape", f"config.json of {self.name}: {keys[0]!r} is {value!r}, not a number"
            ) from None
        if number <= 0:
            raise MemoryFitError("spec.model.shape", f"config.json of {self.name}: {keys[0]!r} must be > 0")
        return number


def shape_from_config(
    config: Mapping[str, Any], name: str = "", *, source: str = "config.json"
) -> ModelShape:
    """The :class:`ModelShape` of a decoder-only (or multimodal with a text decoder) model config."""
    if not isinstance(config, Mapping):
        raise MemoryFitError("spec.model.shape", f"config.json of {name or 'the model'} is not a JSON object")
    r = _Reader(config, name)
    model_type = str(r.get("model_type", default="")).lower()
    _refuse_moe(r, name)
    chatglm = model_type == "chatglm" or "multi_query_group_num" in config or "padded_vocab_size" in config

    hidden = r.require("hidden_size")
    if chatglm:
        layers = r.require("num_layers", "num_hidden_layers")
        heads = r.require("num_attention_heads")
        kv_heads = (
            r.require("multi_query_group_num") if r.get("multi_query_attention", default=False) else heads
        )
        head_dim = int(r.get("kv_channels", default=0) or hidden // heads)
        intermediate = r.require("ffn_hidden_size")
        vocab = r.require("padded_vocab_size", "vocab_size")
        max_positions = r.get("seq_length", "max_position_embeddings")
        qkv_bias = bool(r.get("add_qkv_bias", default=False))
        linear_bias = bool(r.get("add_bias_linear", default=False))  # dense + MLP biases
        o_bias = mlp_bias = linear_bias
        norms_per_layer = 2
        # ChatGLM keeps a separate output_layer unless the config ties it (it never does for GLM-4).
        tied = bool(r.get("tie_word_embeddings", default=False))
    else:
        layers = r.require("num_hidden_layers", "n_layer", "num_layers")
        heads = r.require("num_attention_heads", "n_head")
        kv_heads = int(r.get("num_key_value_heads", default=0) or heads)
        head_dim = int(r.get("head_dim", default=0) or hidden // heads)
        intermediate = r.require("intermediate_size")
        vocab = r.require("vocab_size")
        max_positions = r.get("max_position_embeddings")
        attention_bias = bool(r.get("attention_bias", default=False))
        qkv_bias = (
            attention_bias or model_type in _QKV_BIAS_ALWAYS or r.text.get("model_type") in _QKV_BIAS_ALWAYS
        )
        # Llama-style attention_bias also puts a bias on o_proj; GLM's and Qwen2's o_proj have none.
        o_bias = attention_bias and model_type in {"llama", "mistral"}
        mlp_bias = bool(r.get("mlp_bias", default=False))
        text_type = str(r.text.get("model_type", model_type)).lower()
        norms_per_layer = 4 if (model_type in _FOUR_NORMS or text_type in _FOUR_NORMS) else 2
        # Untied is the conservative default (more parameters) and what llama/qwen2/glm configs default to.
        tied = bool(r.get("tie_word_embeddings", default=False))

    _check_heads(heads, kv_heads, name)
    q = heads * head_dim
    kv = kv_heads * head_dim
    linear = layers * (hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * intermediate)
    rows = layers * (q + 2 * kv + hidden + 2 * intermediate + hidden)
    biases = layers * ((q + 2 * kv) * qkv_bias + hidden * o_bias + (2 * intermediate + hidden) * mlp_bias)
    norms = layers * norms_per_layer * hidden + hidden  # + the final norm
    embeddings = vocab * hidden * (1 if tied else 2)
    vision = vision_parameters(config)
    dtype = str(r.get("torch_dtype", "dtype", default="bfloat16")).replace("torch.", "")
    return ModelShape(
        name=name,
        parameters=linear + biases + norms + embeddings + vision,
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        torch_dtype=_DTYPES.get(dtype, "bfloat16"),
        num_attention_heads=heads,
        intermediate_size=intermediate,
        linear_parameters=linear,
        linear_out_features=rows,
        vision_parameters=vision,
        max_position_embeddings=int(max_positions) if max_positions else None,
        source=source,
    )


def _refuse_moe(r: _Reader, name: str) -> None:
    for key in _MOE_KEYS:
        if r.get(key):
            raise MemoryFitError(
                "spec.model.shape",
                f"{name or 'the model'} is a mixture-of-experts model ({key}); the estimator only knows dense "
                "decoders: set spec.model.shape (parameters, numLayers, numKvHeads, headDim, hiddenSize, vocabSize)",
            )


def _check_heads(heads: int, kv_heads: int, name: str) -> None:
    if kv_heads > heads or heads % kv_heads:
        raise MemoryFitError(
            "spec.model.shape",
            f"config.json of {name or 'the model'}: {heads} attention heads are not a multiple "
            f"of {kv_heads} key/value heads",
        )


def vision_parameters(config: Mapping[str, Any]) -> int:
    """Parameters of a multimodal model's vision tower (0 for text-only configs).

    Exact for GLM-4.1V / AutoGLM-Phone (``glm4v``); other towers get a ViT-style approximation
    (12 x hidden^2 per block), which is enough since they are a few percent of a 9B model.
    """
    vc = config.get("vision_config")
    if not isinstance(vc, Mapping):
        return 0
    h = int(vc.get("hidden_size") or 0)
    depth = int(vc.get("depth") or vc.get("num_hidden_layers") or 0)
    if not h or not depth:
        return 0
    if str(config.get("model_type", "")).startswith("glm4v") or vc.get("model_type") == "glm4v_vision":
        out = int(vc.get("out_hidden_size") or h)
        inter = int(vc.get("intermediate_size") or 4 * h)
        patch = int(vc.get("patch_size") or 14)
        image = int(vc.get("image_size") or 336)
        merge = int(vc.get("spatial_merge_size") or 2)
        temporal = int(vc.get("temporal_patch_size") or 2)
        channels = int(vc.get("in_channels") or 3)
        bias = bool(vc.get("attention_bias", False))
        positions = (image // patch) ** 2 * h
        patch_embed = h * channels * temporal * patch * patch + h
        block = 2 * h + h * 3 * h + 3 * h * bias + h * h + 3 * h * out  # norms, qkv, proj, gated MLP to out
        downsample = h * out * merge * merge + out  # conv merging merge x merge patches
        merger = out * out + 2 * out + 3 * out * inter  # projection, LayerNorm, gated MLP
        return positions + patch_embed + depth * block + 2 * h + downsample + merger
    inter = int(vc.get("intermediate_size") or 4 * h)
    return depth * (4 * h * h + 2 * h * inter)
