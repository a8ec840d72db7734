"""Runtime settings: the contract between the operator and the runtime.

This module is torch-free on purpose: the operator imports it to name the environment variables
it renders into pods, so there is exactly one definition of each name (``AUTOGLM_<FIELD>``).
Every field is also a ``autoglm-runtime serve`` flag (``--<field-with-dashes>``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "AUTOGLM_"


class Quantization(StrEnum):
    """How the weights are held in memory. ``none`` keeps the checkpoint's dtype (fp32 on CPU)."""

    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    NF4 = "nf4"
    FP4 = "fp4"

    @property
    def is_4bit(self) -> bool:
        return self in (Quantization.NF4, Quantization.FP4)

    @property
    def is_bitsandbytes(self) -> bool:
        return self in (Quantization.INT8, Quantization.NF4, Quantization.FP4)


class ComputeDtype(StrEnum):
    """Dtype 4-bit matmuls compute in (bitsandbytes ``bnb_4bit_compute_dtype``)."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class RuntimeSettings(BaseSettings):
    """Everything one runtime pod needs; read from ``AUTOGLM_*`` env vars and CLI flags."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- model -------------------------------------------------------------------------------
    model: str = Field(..., description="Local folder, hf://org/name, or a hub id (org/name).")
    revision: str | None = Field(None, description="Hub revision (commit, tag or branch).")
    served_model_name: str | None = Field(
        None,
        description="Name reported by /v1/models and accepted in requests; default: the model's folder name.",
    )
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code (transformers).")
    quantization: Quantization = Field(Quantization.NONE, description="none, fp16, bf16, int8, nf4 or fp4.")
    double_quant: bool = Field(True, description="4-bit only: quantize the quantization constants too.")
    compute_dtype: ComputeDtype = Field(ComputeDtype.BF16, description="4-bit only: matmul compute dtype.")
    cache_dir: Path | None = Field(None, description="Where fetched weights live (the model cache volume).")
    warmup: bool = Field(True, description="Run one short generation before reporting ready.")
    torch_threads: int = Field(
        0, ge=0, le=1024, description="CPU threads torch may use; 0 = torch's default."
    )

    # --- memory ------------------------------------------------------------------------------
    gpu_memory_percent: int = Field(90, ge=10, le=100, description="Share of each visible GPU's memory.")
    host_memory_percent: int = Field(75, ge=10, le=100, description="Share of the container memory limit.")
    memory_headroom_percent: int = Field(
        10,
        ge=0,
        le=50,
        description="Share of the memory budget the KV pool leaves free (the fit check's headroom).",
    )

    # --- batching and limits -----------------------------------------------------------------
    max_batch_size: int = Field(
        8, ge=1, le=256, description="Requests decoded together; 1 disables batching."
    )
    max_batch_tokens: int = Field(
        0,
        ge=0,
        le=1_048_576,
        description="Tokens one engine step runs (decode tokens + prompt chunks); 0 = 2048 on a GPU, 512 on a CPU.",
    )
    kv_cache_tokens: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="Cap on the KV pool, in tokens; 0 = size it from the memory left.",
    )
    prefix_caching: bool = Field(True, description="Reuse the KV blocks of prompt prefixes seen before.")
    batch_window_ms: float = Field(5.0, ge=0, le=1000, description="How long to wait to fill a batch.")
    max_concurrent_requests: int = Field(64, ge=1, le=10000, description="Requests admitted at once.")
    max_queue: int = Field(256, ge=0, le=100000, description="Admitted requests waiting beyond that get 429.")
    max_input_tokens: int = Field(4096, ge=1, le=1_048_576, description="Longest prompt, in tokens.")
    max_new_tokens: int = Field(512, ge=1, le=1_048_576, description="Most tokens generated per request.")
    request_timeout_s: float = Field(300.0, gt=0, description="Wall-clock limit per request.")
    max_body_bytes: int = Field(
        20 * 1_048_576,
        ge=1024,
        description="Largest accepted HTTP request body (20 MiB: a phone screenshot as a PNG data URL fits).",
    )
    # --- images (vision models) --------------------------------------------------------------
    max_images_per_request: int = Field(10, ge=0, le=256, description="Images one chat request may carry.")
    max_image_pixels: int | None = Field(
        None,
        ge=12544,
        description="Pixels an image is resized to at most before it becomes tokens (the image processor's "
        "max_pixels); default: the model's own. Fewer pixels, fewer image tokens.",
    )
    max_decoded_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest image (width x height) decoded at all; bigger ones (decompression bombs) are "
        "refused from their header, before decoding.",
    )
    image_decode_concurrency: int = Field(
        4, ge=1, le=256, description="Images decoded and preprocessed at once (off the event loop)."
    )
    image_url_hosts: str = Field(
        "",
        max_length=4096,
        description="Comma-separated hosts whose http(s) image URLs are fetched (*.example.com for "
        "subdomains); empty = remote image URLs are refused (send data: URLs).",
    )
    image_url_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Time limit of one remote image fetch."
    )
    image_url_max_bytes: int = Field(
        20 * 1_048_576, ge=1024, description="Largest remote image fetched; bigger ones are refused."
    )

    # --- HTTP and security -------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Bind address.")
    port: int = Field(8000, ge=1, le=65535, description="Bind port.")
    api_keys_file: Path | None = Field(None, description="One API key per line; unset = no auth.")
    metrics_require_auth: bool = Field(False, description="Require an API key on /metrics too.")
    tls_cert_file: Path | None = Field(None, description="PEM certificate; HTTPS when set with the key.")
    tls_key_file: Path | None = Field(None, description="PEM private key.")
    tls_client_ca_file: Path | None = Field(
        None, description="CA bundle; when set, clients need a certificate."
    )
    rate_limit_rps: float = Field(0.0, ge=0, description="Token-bucket rate for all requests; 0 = off.")
    rate_limit_burst: int = Field(0, ge=0, description="Bucket size; 0 = max(1, rate).")
    rate_limit_per_key_rps: float = Field(0.0, ge=0, description="Token-bucket rate per API key; 0 = off.")
    shutdown_grace_s: float = Field(25.0, ge=0, description="SIGTERM: time to finish in-flight requests.")
    breaker_failure_threshold: int = Field(
        5,
        ge=1,
        le=1000,
        description="Requests failing in a row (each in a batch of its own) that open the breaker.",
    )
    breaker_window_s: float = Field(
        60.0, gt=0, description="The failures must fall within this many seconds."
    )
    breaker_cooldown_s: float = Field(
        10.0, gt=0, description="Open breaker: seconds of fast 503s before one probe request is let through."
    )
    log_format: str = Field("json", pattern="^(json|text)$", description="json (in pods) or text.")
    log_level: str = Field("INFO", description="Python log level.")

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @model_validator(mode="after")
    def _tls_pair(self) -> RuntimeSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``gpu_memory_percent`` → ``AUTOGLM_GPU_MEMORY_PERCENT``."""
    if field not in RuntimeSettings.model_fields:
        raise KeyError(f"unknown runtime setting {field!r}")
    return ENV_PREFIX + field.upper()


def to_env(values: dict[str, Any]) -> dict[str, str]:
    """Render settings values as the env vars a pod gets (None values are left out, bools lowercase)."""
    env: dict[str, str] = {}
    for field, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, StrEnum):
            text = value.value
        else:
            text = str(value)
        env[env_name(field)] = text
    return dict(sorted(env.items()))
