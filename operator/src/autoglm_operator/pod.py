"""The pieces of the runtime pod: where the weights are, volumes, the fetch init container, probes,
placement and resources. Pure functions of the typed spec and the memory plan; ``render`` puts them
into the Deployment template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autoglm_operator import api, labels
from autoglm_operator.api import AutoGLMDeploymentSpec
from autoglm_operator.memory.types import MemoryPlan
from autoglm_operator.spec_errors import SpecError
from autoglm_runtime.fetch import layout as fetch_layout
from autoglm_runtime.settings import RuntimeSettings

# --- where things are inside the pod ---------------------------------------------------------
MODELS_DIR = "/models"
TMP_DIR = "/tmp"
API_KEYS_DIR = "/etc/autoglm/api-keys"
API_KEYS_FILE = "keys"
TLS_DIR = "/etc/autoglm/tls"
CLIENT_CA_DIR = "/etc/autoglm/client-ca"
CLIENT_CA_FILE = "ca.crt"

# --- security ----------------------------------------------------------------------------------
RUN_AS = 10001  # the runtime image's non-root user

# --- timing ------------------------------------------------------------------------------------
LOAD_BYTES_PER_SECOND = 50_000_000  # conservative disk/network read rate for the startup budget
LOAD_FIXED_SECONDS = 120  # imports, CUDA context, quantization, warm-up
PRESTOP_SLEEP_SECONDS = 5  # time for endpoint removal to reach every kube-proxy / ingress
SHUTDOWN_GRACE_SECONDS = int(RuntimeSettings.model_fields["shutdown_grace_s"].default)
TERMINATION_MARGIN_SECONDS = 5
PROBE_TIMEOUT_SECONDS = 5
MIN_PROGRESS_DEADLINE_SECONDS = 600

# --- names other components rely on ------------------------------------------------------------
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA GPU feature discovery
GPU_TAINT_KEY = "nvidia.com/gpu"
HF_TOKEN_KEY = "token"  # key of spec.model.credentialsSecret
DEFAULT_REVISION = "main"  # what the fetch command assumes too

_CHECKPOINT_DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


# ================================================================================================
# Model location: where the weights come from and where the runtime finds them
# ================================================================================================


@dataclass(frozen=True)
class ModelLocation:
    """Where the weights are in the pod and how they get there."""

    model_path: str  # AUTOGLM_MODEL
    served_name: str  # default served model name: the repository (or folder) name
    fetch_source: (
        str | None
    )  # what `autoglm-runtime fetch --model` gets; None for pvc:// (already on a volume)
    volume: dict[str, Any]  # the /models volume


def model_location(spec: AutoGLMDeploymentSpec, name: str) -> ModelLocation:
    source = spec.model.source
    if source.startswith("pvc://"):
        claim, _, sub = source.removeprefix("pvc://").partition("/")
        sub = sub.strip("/")
        return ModelLocation(
            model_path=f"{MODELS_DIR}/{sub}" if sub else MODELS_DIR,
            served_name=sub.rsplit("/", 1)[-1] if sub else claim,
            fetch_source=None,
            volume={"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
        )
    cache = spec.model.cache
    if cache is not None and cache.claim_name:
        volume: dict[str, Any] = {"name": "models", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    elif cache is not None and cache.size:
        volume = {"name": "models", "persistentVolumeClaim": {"claimName": labels.cache_claim_name(name)}}
    else:
        volume = {"name": "models", "emptyDir": {}}
    # The fetch command's own layout gives the folder it fills, so the two can never disagree.
    try:
        parsed = fetch_layout.parse_source(source, default_endpoint=fetch_layout.HUB_ENDPOINT)
    except ValueError as exc:
        raise SpecError("spec.model.source", str(exc)) from None
    try:
        path = fetch_layout.model_dir(MODELS_DIR, parsed, spec.model.revision or DEFAULT_REVISION)
    except ValueError as exc:
        raise SpecError("spec.model.revision", str(exc)) from None
    return ModelLocation(
        model_path=path.as_posix(),
        served_name=parsed.repo_id.rsplit("/", 1)[-1],
        fetch_source=source,
        volume=volume,
    )


# ================================================================================================
# Pod details
# ================================================================================================


def transfer_seconds(plan: MemoryPlan) -> int:
    """Seconds to move the checkpoint once (download or read from disk) at the assumed rate."""
    checkpoint = plan.shape.parameters * _CHECKPOINT_DTYPE_BYTES.get(plan.shape.torch_dtype, 2)
    return math.ceil(checkpoint / LOAD_BYTES_PER_SECOND)


def startup_budget_seconds(spec: AutoGLMDeploymentSpec, plan: MemoryPlan) -> int:
    """How long the runtime may take from start to ready: reading the checkpoint dominates."""
    if spec.probes.startup_timeout_seconds is not None:
        return spec.probes.startup_timeout_seconds
    return transfer_seconds(plan) + LOAD_FIXED_SECONDS


def progress_deadline_seconds(spec: AutoGLMDeploymentSpec, plan: MemoryPlan, *, fetches: bool) -> int:
    """Deployment progress deadline: a new pod may fetch the weights, then load them, before it counts
    as available; a shorter deadline would mark a healthy rollout as failed."""
    fetch = transfer_seconds(plan) if fetches else 0
    return max(MIN_PROGRESS_DEADLINE_SECONDS, fetch + startup_budget_seconds(spec, plan) + LOAD_FIXED_SECONDS)


def gpu_product_label(product: str) -> str:
    """The ``nvidia.com/gpu.product`` value for a spec's product.

    A value already in label form (``NVIDIA-A100-PCIE-40GB``, ``Tesla-T4``) is used as given: the
    catalog's canonical name could name a sibling variant and match no node. Short names (``L4``,
    ``T4``) become the catalog's label value (``NVIDIA-L4``, ``Tesla-T4``).
    """
    if product.startswith(("NVIDIA-", "Tesla-")):
        return product
    from autoglm_operator.memory.gpus import lookup_gpu

    try:
        model = lookup_gpu(product)
    except ValueError:  # ambiguous short name: the planner reports it with the field path
        return product
    return model.product if model is not None else product


def image_ref(spec: AutoGLMDeploymentSpec, operator_version: str) -> str:
    img = spec.image
    if img.digest:
        return f"{img.repository}@{img.digest}"
    return f"{img.repository}:{img.tag or operator_version}"


def resources(spec: AutoGLMDeploymentSpec, *, gpu: bool) -> dict[str, Any]:
    r = spec.resources
    extra = {r.gpu.resource_name: r.gpu.count} if gpu and r.gpu.count > 0 else {}
    # extended resources: the limit is the request
    return compute_resources(r.requests, r.limits, extra_limits=extra)


def compute_resources(
    requests_spec: api.ComputeResources,
    limits_spec: api.ComputeResources,
    *,
    extra_limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A container's ``resources`` from the spec's cpu/memory requests and limits."""
    requests = {
        k: v for k, v in (("cpu", requests_spec.cpu), ("memory", requests_spec.memory)) if v is not None
    }
    limits: dict[str, Any] = {
        k: v for k, v in (("cpu", limits_spec.cpu), ("memory", limits_spec.memory)) if v is not None
    }
    limits.update(extra_limits or {})
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _toleration(t: api.Toleration) -> dict[str, Any]:
    return t.model_dump(by_alias=True, exclude_none=True, mode="json")


def scheduling(spec: AutoGLMDeploymentSpec) -> tuple[dict[str, str], list[dict[str, Any]]]:
    gpu = spec.resources.gpu
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if gpu.count > 0:
        if gpu.product:
            node_selector[GPU_PRODUCT_LABEL] = gpu_product_label(gpu.product)
        tolerations.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    node_selector.update(spec.scheduling.node_selector)  # the user's word wins
    for t in spec.scheduling.tolerations:
        if (rendered := _toleration(t)) not in tolerations:
            tolerations.append(rendered)
    return dict(sorted(node_selector.items())), tolerations


def volumes(
    spec: AutoGLMDeploymentSpec, loc: ModelLocation
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pod volumes and the runtime container's mounts."""
    s = spec.serving
    volumes: list[dict[str, Any]] = [loc.volume, {"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]

    def mount_secret(volume: str, secret: str, items: dict[str, str], directory: str) -> None:
        """A Secret's keys as read-only files (``items``: key -> file name) under ``directory``."""
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": secret,
                    "items": [{"key": k, "path": path} for k, path in items.items()],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": volume, "mountPath": directory, "readOnly": True})

    if s.api_key_secret:
        mount_secret("api-keys", s.api_key_secret.name, {s.api_key_secret.key: API_KEYS_FILE}, API_KEYS_DIR)
    if s.tls_secret:
        mount_secret("tls", s.tls_secret, {"tls.crt": "tls.crt", "tls.key": "tls.key"}, TLS_DIR)
    if s.client_ca_secret:
        mount_secret(
            "client-ca", s.client_ca_secret.name, {s.client_ca_secret.key: CLIENT_CA_FILE}, CLIENT_CA_DIR
        )
    return volumes, mounts


# Third-party caches written at run time: the root filesystem is read-only, /tmp is an emptyDir.
WRITABLE_HOME_ENV: list[dict[str, Any]] = [
    {"name": "HOME", "value": TMP_DIR},
    {"name": "HF_HOME", "value": f"{TMP_DIR}/huggingface"},
    {"name": "XDG_CACHE_HOME", "value": f"{TMP_DIR}/.cache"},
    {"name": "TRITON_CACHE_DIR", "value": f"{TMP_DIR}/.triton"},
    {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
]


def fetch_container(spec: AutoGLMDeploymentSpec, loc: ModelLocation) -> dict[str, Any] | None:
    """The weights-fetch init container (same image), or None when the weights are on a volume.

    It fills ``/models/<org>--<name>/<revision>`` (resumable, verified, locked when replicas share a
    cache PVC, a no-op when the cache is complete). The hub token comes from the Secret by reference.
    """
    if loc.fetch_source is None:
        return None
    command = [
        "autoglm-runtime",
        "fetch",
        "--model",
        loc.fetch_source,
        "--revision",
        spec.model.revision or DEFAULT_REVISION,
        "--cache-dir",
        MODELS_DIR,
    ]
    if spec.model.trust_remote_code:
        command.append("--trust-remote-code")  # the repo's *.py files are part of the model then
    env: list[dict[str, Any]] = list(WRITABLE_HOME_ENV)
    if spec.model.credentials_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": spec.model.credentials_secret, "key": HF_TOKEN_KEY}},
            }
        )
    return {
        "command": command,
        "env": env,
        "resources": resources(spec, gpu=False),
        "volume_mounts": [
            {"name": "models", "mountPath": MODELS_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
    }


def probes(spec: AutoGLMDeploymentSpec, startup_seconds: int, *, scheme: str) -> dict[str, dict[str, Any]]:
    """Startup (/readyz, sized to the load), readiness (/readyz) and liveness (/healthz) probes."""
    period = spec.probes.period_seconds

    def probe(path: str, failures: int) -> dict[str, Any]:
        if spec.serving.client_ca_secret is not None:
            # mTLS: the kubelet presents no client certificate, so an HTTPS probe would fail the
            # handshake. A TCP check is the best the kubelet can do (it cannot tell loading from
            # loaded); the runtime's 503 while loading then protects clients.
            action: dict[str, Any] = {"tcpSocket": {"port": "http"}}
        else:
            action = {"httpGet": {"path": path, "port": "http", "scheme": scheme}}
        timing = {"periodSeconds": period, "timeoutSeconds": min(PROBE_TIMEOUT_SECONDS, period)}
        return {**action, **timing, "failureThreshold": failures}

    return {
        "startup": probe("/readyz", max(1, math.ceil(startup_seconds / period))),
        "readiness": probe("/readyz", 3),
        "liveness": probe("/healthz", spec.probes.liveness_failure_threshold),
    }


def strategy(spec: AutoGLMDeploymentSpec) -> dict[str, Any]:
    cache = spec.model.cache
    if (
        cache is not None
        and cache.access_mode == "ReadWriteOncePod"
        and not spec.model.source.startswith("pvc://")
    ):
        return {"type": "Recreate"}  # only one pod may ever mount the cache
    # Never drop below the current capacity during a rollout (one extra pod while it loads).
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def disruption_budget(spec: AutoGLMDeploymentSpec, replicas: int | None) -> dict[str, Any] | None:
    pdb = spec.pod_disruption_budget
    floor = (
        spec.autoscaling.min_replicas if spec.autoscaling_enabled and spec.autoscaling else (replicas or 0)
    )
    # With one pod a budget either blocks node drains forever or allows everything: leave it out.
    if not pdb.enabled or floor < 2:
        return None
    if pdb.min_available is not None:
        return {"min_available": pdb.min_available, "max_unavailable": None}
    return {
        "min_available": None,
        "max_unavailable": pdb.max_unavailable if pdb.max_unavailable is not None else 1,
    }


CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_security_context(run_as: int, *, fs_group: bool = True) -> dict[str, Any]:
    """Restricted pod security: non-root as ``run_as``, seccomp RuntimeDefault (and an fsGroup for volumes)."""
    ctx: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": run_as, "runAsGroup": run_as}
    if fs_group:
        ctx["fsGroup"] = run_as
        ctx["fsGroupChangePolicy"] = "OnRootMismatch"  # large cache volumes: no chown walk per start
    ctx["seccompProfile"] = {"type": "RuntimeDefault"}
    return ctx
