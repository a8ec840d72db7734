"""The whole spec (:class:`AutoGLMDeploymentSpec`), its cross-part CEL rules, and the whole CR."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from autoglm_operator.api.base import API_VERSION, GROUP, KIND, VERSION, ApiModel, CelRule, cel_rules
from autoglm_operator.api.spec_autoscaling import AutoscalingSpec
from autoglm_operator.api.spec_model import ModelSpec, QuantizationMode, QuantizationOptions
from autoglm_operator.api.spec_pods import (
    ImageSpec,
    MonitoringSpec,
    PodDisruptionBudgetSpec,
    ProbesSpec,
    SchedulingSpec,
)
from autoglm_operator.api.spec_resources import ResourcesSpec
from autoglm_operator.api.spec_routing import RoutingSpec
from autoglm_operator.api.spec_serving import MemorySpec, ServingSpec
from autoglm_operator.api.status_model import AutoGLMDeploymentStatus


class AutoGLMDeploymentSpec(ApiModel):
    """Desired state of an AutoGLMDeployment."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.quantizationOptions) || self.quantization in ['nf4', 'fp4', 'auto']",
                message="4-bit options need quantization nf4, fp4 or auto",
                field_path=".quantizationOptions",
            ),
            CelRule(
                rule="!has(self.replicas) || !has(self.autoscaling) || !self.autoscaling.enabled || "
                "(self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
                message="must be within autoscaling.minReplicas and autoscaling.maxReplicas",
                field_path=".replicas",
            ),
            CelRule(
                rule="!self.routing.inferencePool.enabled || !has(self.serving.clientCaSecret)",
                message="the gateway and the endpoint picker present no client certificate: routing through "
                "an InferencePool cannot be combined with serving.clientCaSecret (mTLS)",
                field_path=".routing",
            ),
        )
    )

    model: ModelSpec = Field(..., description="The model to serve.")
    quantization: QuantizationMode = Field(
        QuantizationMode.AUTO,
        description="none, fp16, bf16, int8, nf4, fp4, or auto (least lossy that fits).",
    )
    quantization_options: QuantizationOptions | None = Field(None, description="4-bit options (nf4/fp4).")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPUs, CPU and memory per replica."
    )
    memory: MemorySpec = Field(default_factory=MemorySpec, description="Memory budgets in percent.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Batching, limits, auth, TLS.")
    replicas: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Replicas when autoscaling is off (also the scale subresource); default 1.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Autoscaler settings (HPA or KEDA); absent = fixed replicas."
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Node placement.")
    image: ImageSpec = Field(default_factory=ImageSpec, description="Runtime image.")
    probes: ProbesSpec = Field(default_factory=ProbesSpec, description="Health probes.")
    pod_disruption_budget: PodDisruptionBudgetSpec = Field(
        default_factory=PodDisruptionBudgetSpec, description="Disruption budget."
    )
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Prometheus scraping.")
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec,
        description="Gateway API Inference Extension: an InferencePool, its endpoint picker, an HTTPRoute.",
    )

    @property
    def autoscaling_enabled(self) -> bool:
        return self.autoscaling is not None and self.autoscaling.enabled


class AutoGLMDeployment(ApiModel):
    """The whole custom resource (for offline tools; the operator receives spec/status dicts from kopf)."""

    model_config = ConfigDict(extra="forbid")

    api_version: str = Field(API_VERSION, pattern=f"^{GROUP}/{VERSION}$", description="autoglm.io/v1alpha1")
    kind: str = Field(KIND, pattern=f"^{KIND}$", description=KIND)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Object metadata.")
    spec: AutoGLMDeploymentSpec = Field(..., description="Desired state.")
    status: AutoGLMDeploymentStatus | None = Field(None, description="Observed state.")

    JSON_SCHEMA_ROOTS: ClassVar[tuple[str, ...]] = ("spec", "status")
