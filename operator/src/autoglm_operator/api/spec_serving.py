"""``spec.memory`` and ``spec.serving``: the CR's part of the serving settings.

Their setting fields are not written here: each is declared once, in
:mod:`autoglm_runtime.serving_settings`, and the CR models are built from those declarations
(:func:`~autoglm_runtime.serving_settings.spec_fields`: camelCase name, type, bounds, default,
description) around what only the operator reads (the fit check's switch, the Secrets it mounts)
and the cross-field CEL rules. For type checkers the models are the declarations' classes plus
these fields (the ``TYPE_CHECKING`` branch); at run time they are the generated ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field, StrictBool, create_model

from autoglm_operator.api.base import DNS_LABEL_PATTERN, ApiModel, CelRule, cel_rules
from autoglm_runtime import serving_settings


class SecretKeyRef(ApiModel):
    """A key of a Secret in the CR's namespace."""

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=253, description="Secret name.")
    key: str = Field("keys", max_length=253, description="Key in the Secret.")


class _MemoryRules(ApiModel):
    """Memory budgets, as shares of what the container really has (the JVM MaxRAMPercentage idea)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="self.headroomPercent < self.gpuMemoryPercent",
                message="must be less than gpuMemoryPercent (the headroom is kept inside the GPU budget)",
                field_path=".headroomPercent",
            )
        )
    )

    skip_fit_check: StrictBool = Field(
        False, description="Create pods even when the estimate says the model does not fit (they may OOM)."
    )


class _ServingRules(ApiModel):
    """How the runtime serves: batching, limits, auth and TLS."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="self.maxBatchSize <= self.maxConcurrentRequests",
                message="must be <= maxConcurrentRequests",
                field_path=".maxBatchSize",
            ),
            CelRule(
                rule="!has(self.maxBatchTokens) || self.maxBatchTokens >= self.maxBatchSize",
                message="must be >= maxBatchSize (every row of a full batch decodes one token per step)",
                field_path=".maxBatchTokens",
            ),
            CelRule(
                rule="!has(self.kvCacheTokens) || self.kvCacheTokens >= self.maxInputTokens + self.maxNewTokens",
                message="must be >= maxInputTokens + maxNewTokens (the pool must hold one full-length request)",
                field_path=".kvCacheTokens",
            ),
        )
    )

    api_key_secret: SecretKeyRef | None = Field(
        None, description="Secret with the API keys, one per line; unset = no authentication."
    )
    tls_secret: str | None = Field(
        None,
        pattern=DNS_LABEL_PATTERN,
        max_length=253,
        description="kubernetes.io/tls Secret; serves HTTPS when set.",
    )
    client_ca_secret: SecretKeyRef | None = Field(
        None, description="CA bundle (key ca.crt by default) to require client certificates (mTLS)."
    )


if TYPE_CHECKING:

    class MemorySpec(_MemoryRules, serving_settings.EngineSettings):  # type: ignore[misc]
        pass

    class ServingSpec(_ServingRules, serving_settings.ServingSettings):  # type: ignore[misc]
        image_url_hosts: list[str]  # type: ignore[assignment]

else:
    MemorySpec = create_model(
        "MemorySpec",
        __base__=_MemoryRules,
        __module__=__name__,
        __doc__=_MemoryRules.__doc__,
        **serving_settings.spec_fields("memory"),
    )
    ServingSpec = create_model(
        "ServingSpec",
        __base__=_ServingRules,
        __module__=__name__,
        __doc__=_ServingRules.__doc__,
        **serving_settings.spec_fields("serving"),
    )
