"""Runtime settings: the contract between the operator and the runtime.

This module is torch-free on purpose: the operator imports it to name the environment variables
it renders into pods, so there is exactly one definition of each name (``AUTOGLM_<FIELD>``).
Every field is also a ``autoglm-runtime serve`` flag (``--<field-with-dashes>``). The serving
settings (batching, limits, memory shares: the ones the CR sets) are declared once, in
:mod:`autoglm_runtime.serving_settings`, and inherited here; this module adds the runtime-only ones.
A renamed setting's earlier env var (``AUTOGLM_REQUEST_TIMEOUT_S``) is still read, below the new one,
with a warning (:class:`RenamedEnvSource`).
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from autoglm_runtime.serving_settings import Quantization, ServingSettings, renamed

__all__ = ["ENV_PREFIX", "ComputeDtype", "Quantization", "RuntimeSettings", "env_name", "to_env"]

ENV_PREFIX = "AUTOGLM_"

log = logging.getLogger("autoglm_runtime.settings")


class RenamedEnvSource(PydanticBaseSettingsSource):
    """The earlier env var of each renamed setting (``AUTOGLM_REQUEST_TIMEOUT_S``), read as the new
    setting, deprecated. It sits below the env source, so the new variable wins where both are set;
    either way one warning names the new variable."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the old names directly

    def __call__(self) -> dict[str, Any]:
        env = {key.upper(): value for key, value in os.environ.items()}  # case-insensitive, as the env source
        values: dict[str, Any] = {}
        for old, new in renamed(self.settings_cls).items():
            old_env, new_env = ENV_PREFIX + old.upper(), ENV_PREFIX + new.upper()
            if old_env not in env:
                continue
            if new_env in env:
                log.warning("%s is deprecated and ignored: %s is set too and wins", old_env, new_env)
                continue
            log.warning("%s is deprecated: use %s", old_env, new_env)
            values[new] = env[old_env]
        return values


class ComputeDtype(StrEnum):
    """Dtype 4-bit matmuls compute in (bitsandbytes ``bnb_4bit_compute_dtype``)."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class RuntimeSettings(BaseSettings, ServingSettings):
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
    double_quant: bool = Field(True, description="4-bit only: quantize the quantization constants too.")
    compute_dtype: ComputeDtype = Field(ComputeDtype.BF16, description="4-bit only: matmul compute dtype.")
    cache_dir: Path | None = Field(None, description="Where fetched weights live (the model cache volume).")
    warmup: bool = Field(True, description="Run one short generation before reporting ready.")
    torch_threads: int = Field(
        0, ge=0, le=1024, description="CPU threads torch may use; 0 = torch's default."
    )

    image_decode_concurrency: int = Field(
        4, ge=1, le=256, description="Images decoded and preprocessed at once (off the event loop)."
    )

    # --- HTTP and security -------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Bind address.")
    api_keys_file: Path | None = Field(None, description="One API key per line; unset = no auth.")
    metrics_require_auth: bool = Field(False, description="Require an API key on /metrics too.")
    tls_cert_file: Path | None = Field(None, description="PEM certificate; HTTPS when set with the key.")
    tls_key_file: Path | None = Field(None, description="PEM private key.")
    tls_client_ca_file: Path | None = Field(
        None, description="CA bundle; when set, clients need a certificate."
    )
    rate_limit_burst: int = Field(0, ge=0, description="Bucket size; 0 = max(1, rate).")
    shutdown_grace_s: float = Field(25.0, ge=0, description="SIGTERM: time to finish in-flight requests.")
    keep_alive_s: int = Field(
        75,
        ge=1,
        le=3600,
        description="Idle HTTP keep-alive connections close after this long. Keep it above your clients' "
        "and gateway's idle timeout (httpx 5 s, AWS ALB 60 s): a request sent on a connection the "
        "server is just closing fails with a reset.",
    )
    log_format: str = Field("json", pattern="^(json|text)$", description="json (in pods) or text.")
    log_level: str = Field("INFO", description="Python log level.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments (the flags) over AUTOGLM_* over the renamed settings' earlier env vars.
        return init_settings, env_settings, RenamedEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("max_batch_tokens", "kv_cache_tokens", mode="before")
    @classmethod
    def _zero_is_unset(cls, v: Any) -> Any:
        # 0 was these settings' "not set" before None was; still read as not set.
        return None if v in (0, "0") else v

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
