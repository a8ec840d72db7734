"""``spec.autoscaling``: the HPA or KEDA ScaledObject that owns the replica count."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, StrictBool

from autoglm_operator.api.base import ApiModel, CelRule, cel_rules


class AutoscalingMetric(StrEnum):
    """What the autoscaler scales on."""

    INFLIGHT = "inflight-requests"
    QUEUE = "queue-depth"
    CPU = "cpu"


class AutoscalingEngine(StrEnum):
    """Which controller scales the Deployment."""

    HPA = "hpa"
    KEDA = "keda"


class ScalingBehavior(ApiModel):
    """HPA behaviour."""

    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale-up stabilization window."
    )
    scale_down_stabilization_seconds: int = Field(
        600,
        ge=0,
        le=3600,
        description="Scale-down stabilization window (long: a 9B model takes minutes to load).",
    )


class AutoscalingSpec(ApiModel):
    """Horizontal autoscaling; the autoscaler (an HPA, or KEDA's) owns the replica count while enabled."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="self.minReplicas <= self.maxReplicas",
                message="must be <= maxReplicas",
                field_path=".minReplicas",
            ),
            CelRule(
                rule="!has(self.target) || self.metric != 'cpu' || self.target <= 100",
                message="is a utilization percentage for metric cpu and must be <= 100",
                field_path=".target",
            ),
            CelRule(
                rule="!has(self.prometheusAddress) || self.engine == 'keda'",
                message="is read by engine keda only",
                field_path=".prometheusAddress",
            ),
        )
    )

    enabled: StrictBool = Field(
        True, description="Scale automatically; false keeps the block but scales by spec.replicas."
    )
    engine: AutoscalingEngine = Field(
        AutoscalingEngine.HPA,
        description="hpa: an autoscaling/v2 HPA (per-pod metrics through a custom-metrics adapter such as "
        "prometheus-adapter, or metrics-server for cpu); keda: a KEDA ScaledObject with a Prometheus trigger "
        "(KEDA creates and owns the HPA).",
    )
    min_replicas: int = Field(
        1, ge=1, le=1000, description="Fewest replicas (no scale to zero: a model loads for minutes)."
    )
    max_replicas: int = Field(4, ge=1, le=1000, description="Most replicas.")
    metric: AutoscalingMetric = Field(
        AutoscalingMetric.INFLIGHT,
        description="inflight-requests or queue-depth (per-pod gauges of the runtime) or cpu (utilization "
        "percent; engine hpa only reads it from metrics-server).",
    )
    target: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="Target per pod: requests, queued requests or CPU percent. Default: what one replica "
        "holds at once (serving.maxBatchSize, or fewer when the KV-cache pool holds fewer full-length "
        "requests) for inflight-requests, half of that for queue-depth, 70 for cpu.",
    )
    prometheus_address: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^https?://[^\s]+$",
        description="Engine keda: the Prometheus server KEDA queries; default the operator's "
        "--prometheus-address (chart value autoscaling.prometheusAddress).",
    )
    behavior: ScalingBehavior = Field(default_factory=ScalingBehavior, description="Stabilization windows.")
