"""``spec.routing``: the Gateway API Inference Extension (an InferencePool, its endpoint picker,
an HTTPRoute)."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StrictBool

from autoglm_operator.api.base import DNS_LABEL_PATTERN, ApiModel, CelRule, cel_rules
from autoglm_operator.api.spec_resources import ComputeResources

ENDPOINT_PICKER_IMAGE = "ghcr.io/llm-d/llm-d-router-endpoint-picker:v0.10.0"
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
GATEWAY_GROUP_PATTERN = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class EndpointPickerSpec(ApiModel):
    """The endpoint picker (llm-d's router) that chooses the pod for each request sent to the pool."""

    image: str = Field(
        ENDPOINT_PICKER_IMAGE,
        max_length=512,
        description="Endpoint picker image (llm-d-router's released one).",
    )
    pull_policy: str = Field(
        "IfNotPresent", pattern="^(Always|IfNotPresent|Never)$", max_length=16, description="Pull policy."
    )
    replicas: int = Field(
        1,
        ge=1,
        le=16,
        description="Picker pods. More than one run side by side, each with its own prefix index "
        "(no leader election: see docs/operator.md).",
    )
    failure_mode: str = Field(
        "FailOpen",
        pattern="^(FailOpen|FailClose)$",
        max_length=16,
        description="What the gateway does when the picker does not answer: FailOpen sends the request to "
        "any pod of the pool, FailClose refuses it.",
    )
    secure_serving: StrictBool = Field(
        True,
        description="Serve the gateway's ext-proc calls over TLS with the picker's self-signed certificate "
        "(llm-d's default; Istio then needs a DestinationRule with tls.mode SIMPLE for the picker's Service); "
        "false for gateways that call it in plaintext (agentgateway).",
    )
    requests: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="1", memory="1Gi"),
        description="Picker container requests.",
    )
    limits: ComputeResources = Field(
        default_factory=lambda: ComputeResources(memory="4Gi"), description="Picker container limits."
    )


class InferencePoolSpec(ApiModel):
    """An InferencePool (inference.networking.k8s.io/v1) over this CR's pods, with its endpoint picker."""

    enabled: StrictBool = Field(
        False, description="Render the InferencePool, the endpoint picker, its RBAC and its config."
    )
    endpoint_picker: EndpointPickerSpec = Field(
        default_factory=EndpointPickerSpec, description="The endpoint picker deployment."
    )


class ParentReference(ApiModel):
    """A Gateway API ParentReference: the Gateway (or a listener of it) the route attaches to."""

    group: str = Field(
        "gateway.networking.k8s.io",
        max_length=253,
        pattern=GATEWAY_GROUP_PATTERN,
        description="API group of the parent.",
    )
    kind: str = Field(
        "Gateway",
        min_length=1,
        max_length=63,
        pattern=r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$",
        description="Kind of the parent.",
    )
    name: str = Field(..., min_length=1, max_length=253, description="Name of the parent (the Gateway).")
    namespace: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Namespace of the parent; default: the CR's (the Gateway must allow routes from it).",
    )
    section_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Listener of the Gateway to attach to.",
    )
    port: int | None = Field(None, ge=1, le=65535, description="Port of the Gateway to attach to.")


class HTTPRouteSpec(ApiModel):
    """An HTTPRoute sending the OpenAI paths (/v1) from a Gateway to the InferencePool."""

    parent_refs: list[ParentReference] = Field(
        ..., min_length=1, max_length=32, description="Gateways (Gateway API ParentReferences) to attach to."
    )
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME_PATTERN)]] = Field(
        default_factory=list,
        max_length=16,
        description="Host names the route answers for; the first one makes status.endpoint.",
    )
    scheme: str = Field(
        "http",
        pattern="^(http|https)$",
        max_length=8,
        description="Scheme clients use at the Gateway (its listener: HTTPS terminates TLS there); "
        "only used for status.endpoint.",
    )


class RoutingSpec(ApiModel):
    """Routing by what each pod holds (prefix cache, queue, KV usage) instead of the Service's spreading."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.httpRoute) || self.inferencePool.enabled",
                message="an HTTPRoute routes to the InferencePool: set inferencePool.enabled: true",
                field_path=".httpRoute",
            )
        )
    )

    inference_pool: InferencePoolSpec = Field(
        default_factory=InferencePoolSpec, description="InferencePool and endpoint picker; off by default."
    )
    http_route: HTTPRouteSpec | None = Field(
        None, description="An HTTPRoute from the named Gateways to the pool; absent = none."
    )

    @property
    def pool_enabled(self) -> bool:
        return self.inference_pool.enabled
