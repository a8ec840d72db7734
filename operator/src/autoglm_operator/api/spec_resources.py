"""``spec.resources``: GPUs, CPU and memory of one replica."""

from __future__ import annotations

from pydantic import Field

from autoglm_operator.api.base import QUALIFIED_NAME_MAX, QUANTITY_MAX, QUANTITY_PATTERN, ApiModel


class GpuSpec(ApiModel):
    """GPUs per replica."""

    count: int = Field(1, ge=0, le=16, description="GPUs per pod; 0 runs on CPU (tests, tiny models).")
    resource_name: str = Field(
        "nvidia.com/gpu",
        pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$",
        max_length=QUALIFIED_NAME_MAX,
        description="Extended resource to request, e.g. nvidia.com/gpu or a MIG profile nvidia.com/mig-3g.40gb.",
    )
    product: str | None = Field(
        None,
        max_length=128,
        description="GPU product: short name (L4, T4, A10G, L40S, A100-40GB, A100-80GB, H100, H200, RTX4090) or "
        "the nvidia.com/gpu.product label value (NVIDIA-L4). Pods are placed on nodes with that label.",
    )
    memory: str | None = Field(
        None,
        pattern=QUANTITY_PATTERN,
        max_length=QUANTITY_MAX,
        description="Memory of one GPU (e.g. 24Gi); overrides the product table.",
    )
    compute_capability: str | None = Field(
        None,
        pattern=r"^[0-9]+\.[0-9]+$",
        max_length=8,
        description="Compute capability (e.g. 8.9); overrides the product table.",
    )


class ComputeResources(ApiModel):
    """CPU and memory of the runtime container."""

    cpu: str | None = Field(
        None, pattern=QUANTITY_PATTERN, max_length=QUANTITY_MAX, description="CPU, e.g. 4."
    )
    memory: str | None = Field(
        None, pattern=QUANTITY_PATTERN, max_length=QUANTITY_MAX, description="Memory, e.g. 32Gi."
    )


class ResourcesSpec(ApiModel):
    """Resources of one replica."""

    gpu: GpuSpec = Field(default_factory=GpuSpec, description="GPUs per pod.")
    requests: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="2", memory="16Gi"), description="Container requests."
    )
    limits: ComputeResources = Field(
        default_factory=lambda: ComputeResources(memory="32Gi"),
        description="Container limits; the memory limit is what hostMemoryPercent is a share of.",
    )
