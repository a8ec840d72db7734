"""The pods' other parts: ``spec.scheduling``, ``image``, ``probes``, ``podDisruptionBudget``,
``monitoring``."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, StrictBool

from autoglm_operator.api.base import (
    LABEL_VALUE_MAX,
    NAME_MAX,
    QUALIFIED_NAME_MAX,
    ApiModel,
    CelRule,
    LabelValue,
    ObjectName,
    cel_rules,
)


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(None, max_length=QUALIFIED_NAME_MAX, description="Taint key.")
    operator: str | None = Field(
        None, pattern="^(Exists|Equal)$", max_length=8, description="Exists or Equal."
    )
    value: str | None = Field(None, max_length=LABEL_VALUE_MAX, description="Taint value.")
    effect: str | None = Field(
        None, pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$", max_length=16, description="Taint effect."
    )
    toleration_seconds: int | None = Field(None, description="NoExecute toleration time.")


class SchedulingSpec(ApiModel):
    """Where pods may run."""

    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Extra node labels to require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Extra tolerations (nvidia.com/gpu taints are tolerated already).",
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="core/v1 Affinity, passed through unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        None, max_length=NAME_MAX, description="PriorityClass of the pods."
    )
    runtime_class_name: str | None = Field(
        None, max_length=NAME_MAX, description="RuntimeClass, e.g. nvidia."
    )


class ImageSpec(ApiModel):
    """The runtime image."""

    repository: str = Field(
        "ghcr.io/autoglm/autoglm-runtime", max_length=512, description="Image repository."
    )
    tag: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="Image tag; default: the operator's version.",
    )
    digest: str | None = Field(
        None, pattern=r"^sha256:[a-f0-9]{64}$", max_length=71, description="Pin by digest (wins over tag)."
    )
    pull_policy: str = Field(
        "IfNotPresent", pattern="^(Always|IfNotPresent|Never)$", max_length=16, description="Pull policy."
    )
    pull_secrets: list[ObjectName] = Field(
        default_factory=list, max_length=16, description="imagePullSecrets names."
    )


class ProbesSpec(ApiModel):
    """Health probes. The startup budget is derived from the weight size unless set."""

    startup_timeout_seconds: int | None = Field(
        None,
        ge=30,
        le=86400,
        description="How long a pod may take to load; default: weight size / 50 MB/s + 120 s.",
    )
    period_seconds: int = Field(10, ge=1, le=300, description="Probe period.")
    liveness_failure_threshold: int = Field(
        3, ge=1, le=100, description="Liveness failures before a restart."
    )


class PodDisruptionBudgetSpec(ApiModel):
    """PodDisruptionBudget for the replicas."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!(has(self.minAvailable) && has(self.maxUnavailable))",
                message="set at most one of minAvailable and maxUnavailable",
            )
        )
    )

    enabled: StrictBool = Field(True, description="Create a PDB.")
    min_available: int | None = Field(None, ge=0, description="Pods that must stay up.")
    max_unavailable: int | None = Field(None, ge=0, description="Pods that may be down; default 1.")


class MonitoringSpec(ApiModel):
    """Prometheus scraping."""

    service_monitor: StrictBool = Field(
        False, description="Create a monitoring.coreos.com/v1 ServiceMonitor."
    )
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$", max_length=16, description="Scrape interval.")
    labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Extra labels on the ServiceMonitor."
    )
