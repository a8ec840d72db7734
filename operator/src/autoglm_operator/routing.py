"""spec.routing → the Gateway API Inference Extension objects (pure, like render).

With ``spec.routing.inferencePool.enabled`` the CR's pods become one endpoint: an InferencePool
selecting exactly them (the Deployment's selector labels, on the runtime's port), and llm-d's
endpoint picker, which the gateway asks for the pod of each request. The picker scores pods by queue,
KV-cache usage and an approximate prefix index (it hashes each request's messages in blocks and
remembers where it sent them), so a multi-turn session goes back to the pod that holds its history.

It reads each pod's ``/metrics`` and finds the engine's metric names by the pod label
``llm-d.ai/engine-type`` (:data:`labels.ENGINE_TYPE`): our ``engineConfigs`` entry names the
runtime's model-server-protocol gauges (:mod:`autoglm_runtime.metrics`), so one name is used on both
sides. Flags, ports and probes follow llm-d-router v0.10.0's chart (``config/charts/routerlib``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from autoglm_operator import labels, pod
from autoglm_operator.api import AutoGLMDeploymentSpec
from autoglm_runtime import metrics as runtime_metrics

POOL_GROUP = "inference.networking.k8s.io"
EXT_PROC_PORT = 9002
HEALTH_PORT = 9003
METRICS_PORT = 9090
PICKER_RUN_AS = 65532  # the picker image's (distroless) non-root user
CONFIG_FILE = "epp.yaml"
CONFIG_CHECKSUM_ANNOTATION = "autoglm.io/config-checksum"
# The HTTPRoute's request timeout: the runtime's own limit plus time to queue and stream the end.
ROUTE_TIMEOUT_MARGIN_SECONDS = 30

# What the picker reads, and nothing else: its pool, the pods it picks from, llm-d's per-model
# objects (InferenceObjective, InferenceModelRewrite; its controllers watch them). No writes.
PICKER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [POOL_GROUP], "resources": ["inferencepools"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["llm-d.ai"],
        "resources": ["inferenceobjectives", "inferencemodelrewrites"],
        "verbs": ["get", "list", "watch"],
    },
]


def engine_config() -> dict[str, str]:
    """The ``core-metrics-extractor`` entry for our runtime: every name is one it exports."""
    return {
        "name": labels.ENGINE_TYPE,
        "queuedRequestsSpec": runtime_metrics.QUEUE_DEPTH,
        "runningRequestsSpec": runtime_metrics.RUNNING_REQUESTS,
        "kvUsageSpec": runtime_metrics.KV_CACHE_USAGE,
        "cacheInfoSpec": runtime_metrics.KV_CACHE_CONFIG_INFO,
        "cacheBlockSizeLabelName": runtime_metrics.KV_CACHE_BLOCK_SIZE_LABEL,
        "cacheNumBlocksLabelName": runtime_metrics.KV_CACHE_NUM_BLOCKS_LABEL,
    }


def picker_config(*, tls: bool) -> dict[str, Any]:
    """The EndpointPickerConfig: llm-d's default scorers and weights, our engine's metric names."""
    return {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer"},
            {
                "type": "metrics-data-source",
                # the runtime's certificate is for its Service name, not the pod IPs the picker scrapes
                "parameters": {
                    "scheme": "https" if tls else "http",
                    "path": "/metrics",
                    "insecureSkipVerify": True,
                },
            },
            {
                "type": "core-metrics-extractor",
                "parameters": {
                    "engineLabelKey": labels.ENGINE_TYPE_LABEL,
                    "defaultEngine": labels.ENGINE_TYPE,
                    "engineConfigs": [engine_config()],
                },
            },
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                ],
            }
        ],
    }


def pod_labels(spec: AutoGLMDeploymentSpec) -> dict[str, str]:
    """Extra labels of the runtime pods: the engine type the picker's config names, when routed."""
    return {labels.ENGINE_TYPE_LABEL: labels.ENGINE_TYPE} if spec.routing.pool_enabled else {}


def route_endpoint(spec: AutoGLMDeploymentSpec) -> str | None:
    """Where clients connect through the Gateway (``status.endpoint``), when the route names a host."""
    route = spec.routing.http_route
    if not spec.routing.pool_enabled or route is None or not route.hostnames:
        return None
    host = route.hostnames[0]
    if host.startswith("*."):  # a wildcard names no host a client can use
        return None
    return f"{route.scheme}://{host}/v1"


def context(
    spec: AutoGLMDeploymentSpec,
    name: str,
    namespace: str | None,
    *,
    version: str,
    owner: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Template values of the routing objects (``routing.*`` in the templates)."""
    picker = spec.routing.inference_pool.endpoint_picker
    picker_labels = labels.picker_labels(name, version)
    picker_name = labels.picker_name(name)

    def metadata(obj_name: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": obj_name, "labels": dict(picker_labels)}
        if namespace:
            meta["namespace"] = namespace
        if owner:
            meta["ownerReferences"] = [dict(owner)]
        return meta

    config = yaml.safe_dump(picker_config(tls=spec.serving.tls_secret is not None), sort_keys=False)
    args = [
        "--pool-name", name,
        *(["--pool-namespace", namespace] if namespace else []),
        "--pool-group", POOL_GROUP,
        "--config-file", f"/config/{CONFIG_FILE}",
        "--grpc-health-port", str(HEALTH_PORT),
        "--zap-encoder", "json",
        "--tracing=false",
        "--metrics-endpoint-auth=false",
        *([] if picker.secure_serving else ["--secure-serving=false"]),
    ]  # fmt: skip
    route = spec.routing.http_route
    ctx: dict[str, Any] = {
        "metadata": metadata,
        "picker_name": picker_name,
        "selector": labels.picker_selector_labels(name),
        "pod_labels": picker_labels,
        "pod_annotations": {CONFIG_CHECKSUM_ANNOTATION: hashlib.sha256(config.encode()).hexdigest()},
        "pod_security_context": pod.pod_security_context(PICKER_RUN_AS, fs_group=False),
        "container_security_context": pod.CONTAINER_SECURITY_CONTEXT,
        "priority_class_name": spec.scheduling.priority_class_name,
        "image": picker.image,
        "pull_policy": picker.pull_policy,
        "replicas": picker.replicas,
        "args": args,
        "resources": pod.compute_resources(picker.requests, picker.limits),
        "failure_mode": picker.failure_mode,
        "ext_proc_port": EXT_PROC_PORT,
        "health_port": HEALTH_PORT,
        "metrics_port": METRICS_PORT,
        "config_file": CONFIG_FILE,
        "config": config,
        "rules": PICKER_RULES,
        "route": None,
    }
    if route is not None:
        ctx["route"] = {
            "parent_refs": [
                r.model_dump(by_alias=True, exclude_none=True, mode="json") for r in route.parent_refs
            ],
            "hostnames": list(route.hostnames),
            "request_timeout": f"{spec.serving.request_timeout_seconds + ROUTE_TIMEOUT_MARGIN_SECONDS}s",
        }
    return ctx


TEMPLATES = (
    "inferencepool.yaml.j2",
    "picker-serviceaccount.yaml.j2",
    "picker-role.yaml.j2",
    "picker-rolebinding.yaml.j2",
    "picker-configmap.yaml.j2",
    "picker-service.yaml.j2",
    "picker-deployment.yaml.j2",
)


def objects(
    spec: AutoGLMDeploymentSpec,
    ctx: dict[str, Any],
    fill: Callable[[str, Mapping[str, Any]], dict[str, Any]],
) -> list[dict[str, Any]]:
    """The routing objects (none unless the pool is enabled); ``ctx`` must hold ``routing``."""
    if not spec.routing.pool_enabled:
        return []
    out = [fill(t, ctx) for t in TEMPLATES]
    if spec.routing.http_route is not None:
        out.append(fill("httproute.yaml.j2", ctx))
    return out
