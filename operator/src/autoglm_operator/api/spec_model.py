"""``spec.model`` (which model, where its weights come from) and ``spec.quantization``."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, StrictBool

from autoglm_operator.api.base import (
    DNS_LABEL_PATTERN,
    NAME_MAX,
    QUANTITY_MAX,
    QUANTITY_PATTERN,
    REVISION_PATTERN,
    SOURCE_PATTERN,
    ApiModel,
    CelRule,
    cel_rules,
)
from autoglm_runtime.settings import ComputeDtype


class ModelCache(ApiModel):
    """Where weights are cached. Either an existing claim or one the operator creates."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="has(self.claimName) != has(self.size)",
                message="set exactly one of claimName (use an existing PVC) or size (the operator creates one)",
            )
        )
    )

    claim_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
        description="Existing PersistentVolumeClaim to cache weights in.",
    )
    size: str | None = Field(
        None,
        pattern=QUANTITY_PATTERN,
        max_length=QUANTITY_MAX,
        description="Size of a cache PVC the operator creates, e.g. 40Gi.",
    )
    storage_class_name: str | None = Field(
        None, max_length=NAME_MAX, description="Storage class of the created PVC."
    )
    access_mode: str = Field(
        "ReadWriteOnce",
        max_length=16,
        pattern="^(ReadWriteOnce|ReadWriteMany|ReadWriteOncePod)$",
        description="Access mode of the created PVC; ReadWriteMany lets replicas on several nodes share it.",
    )


class ModelShapeSpec(ApiModel):
    """Hints for the memory estimator when the model is not in the built-in catalog (override it)."""

    parameters: int | None = Field(None, ge=1, description="Total parameter count.")
    num_layers: int | None = Field(None, ge=1, description="Decoder layers (num_hidden_layers).")
    num_kv_heads: int | None = Field(None, ge=1, description="Key/value heads (num_key_value_heads).")
    head_dim: int | None = Field(None, ge=1, description="Dimension of one attention head.")
    hidden_size: int | None = Field(None, ge=1, description="Hidden size.")
    vocab_size: int | None = Field(
        None, ge=1, description="Vocabulary size (embeddings stay 16-bit when quantized)."
    )
    tie_word_embeddings: StrictBool | None = Field(
        None, description="Whether lm_head shares the input embeddings."
    )


class ModelSpec(ApiModel):
    """Which model to serve and where its weights come from."""

    source: str = Field(
        ...,
        pattern=SOURCE_PATTERN,
        max_length=1024,
        description="Where the weights are: hf://org/name (Hugging Face hub), pvc://claim/path (a volume), "
        "or an https:// base URL of a hub mirror followed by /org/name.",
    )
    revision: str | None = Field(
        None,
        max_length=256,
        pattern=REVISION_PATTERN,
        description="Hub revision: a commit hash (recommended, reproducible), tag or branch.",
    )
    credentials_secret: str | None = Field(
        None,
        pattern=DNS_LABEL_PATTERN,
        max_length=253,
        description="Secret in the same namespace holding the hub token under key `token` (gated/private models).",
    )
    trust_remote_code: StrictBool = Field(
        False, description="Allow the model repository's own Python code to run."
    )
    served_model_name: str | None = Field(
        None, max_length=256, description="Model name clients pass in requests; default: the repository name."
    )
    cache: ModelCache | None = Field(
        None, description="Persistent weights cache; default: an emptyDir per pod."
    )
    shape: ModelShapeSpec | None = Field(
        None, description="Estimator hints for models outside the built-in catalog."
    )


# --------------------------------------------------------------------------------------------
# spec.quantization
# --------------------------------------------------------------------------------------------


class QuantizationMode(StrEnum):
    """Requested quantization; ``auto`` lets the operator pick the least lossy mode that fits."""

    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    NF4 = "nf4"
    FP4 = "fp4"
    AUTO = "auto"


class QuantizationOptions(ApiModel):
    """4-bit (nf4/fp4) options passed to bitsandbytes."""

    double_quant: StrictBool = Field(
        True, description="Quantize the quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: ComputeDtype = Field(ComputeDtype.BF16, description="Dtype 4-bit matmuls compute in.")
