"""``status``: conditions shaped like metav1.Condition, the memory estimate, the scale subresource."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, StrictBool

from autoglm_operator.api.base import QUALIFIED_NAME_MAX, QUANTITY_MAX, ApiModel


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    MEMORY_FIT = "MemoryFit"
    AUTOSCALING = "Autoscaling"


class Condition(ApiModel):
    """Shaped like metav1.Condition."""

    type: str = Field(
        ...,
        max_length=QUALIFIED_NAME_MAX,
        description="Ready, Progressing, Degraded, MemoryFit or Autoscaling.",
    )
    status: str = Field(
        ..., pattern="^(True|False|Unknown)$", max_length=8, description="True, False or Unknown."
    )
    reason: str = Field(..., max_length=1024, description="CamelCase reason.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(
        ..., max_length=64, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(None, ge=0, description="Generation this condition is about.")


class MemoryEstimateStatus(ApiModel):
    """The memory estimate of the chosen quantization, in GiB."""

    weights_gib: float = Field(..., description="Weights.")
    kv_cache_gib: float = Field(
        ..., description="KV cache the fit check reserves: one request of maxInputTokens + maxNewTokens."
    )
    overhead_gib: float = Field(..., description="CUDA context, activations of one step, fragmentation.")
    total_gib: float = Field(..., description="Per-replica total.")
    budget_gib: float = Field(..., description="GPU budget per replica (memory × count × gpuMemoryPercent).")
    fits: StrictBool = Field(..., description="total <= budget minus headroom.")
    kv_pool_tokens: int | None = Field(
        None,
        ge=0,
        description="Tokens the KV-cache pool holds: what the budget leaves after weights and one step.",
    )
    concurrent_full_requests: int | None = Field(
        None, ge=0, description="Full-length requests (maxInputTokens + maxNewTokens) the pool holds at once."
    )


class AutoGLMDeploymentStatus(ApiModel):
    """Observed state of an AutoGLMDeployment."""

    observed_generation: int | None = Field(None, description="Generation the operator last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Ready, Progressing, Degraded, MemoryFit, Autoscaling.",
    )
    replicas: int | None = Field(None, description="Pods of the Deployment (scale subresource).")
    ready_replicas: int | None = Field(None, description="Ready pods.")
    selector: str | None = Field(
        None, max_length=4096, description="Label selector of the pods (scale subresource)."
    )
    quantization: str | None = Field(None, max_length=16, description="Quantization in use (auto resolved).")
    estimated_gpu_memory: str | None = Field(
        None, max_length=QUANTITY_MAX, description="Estimated GPU memory per replica, e.g. 10.2Gi."
    )
    estimate: MemoryEstimateStatus | None = Field(None, description="Estimate breakdown.")
    endpoint: str | None = Field(
        None, max_length=1024, description="In-cluster URL of the OpenAI-compatible API."
    )
