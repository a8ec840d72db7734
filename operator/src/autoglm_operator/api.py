"""The AutoGLMDeployment API (autoglm.io/v1alpha1): the single source of truth for the CRD.

`make crds` turns these pydantic models into ``crds/autoglm.io_autoglmdeployments.yaml``
(see :mod:`autoglm_operator.crd`). Cross-field rules are declared once, as CEL, with
:func:`cel_rules`; the API server evaluates them from the CRD and the operator evaluates the same
expressions (with cel-python) when it parses a spec, so both say the same thing.
"""

from __future__ import annotations

from contextvars import ContextVar
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, StrictBool, model_validator
from pydantic.alias_generators import to_camel

from autoglm_runtime.settings import ComputeDtype

GROUP = "autoglm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AutoGLMDeployment"
PLURAL = "autoglmdeployments"
SINGULAR = "autoglmdeployment"
SHORT_NAMES = ["agd"]
CATEGORIES = ["autoglm"]

REVISION_PATTERN = r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Bounds the API server's CEL cost estimator needs (every string, list and map has one; a test checks).
QUANTITY_MAX = 64  # resource.Quantity strings: "40Gi", "1500m"
NAME_MAX = 253  # DNS subdomain names (objects, PriorityClass, RuntimeClass, StorageClass)
QUALIFIED_NAME_MAX = 317  # prefix (253) + "/" + name (63): label keys, taint keys, extended resources
LABEL_VALUE_MAX = 63
LabelValue = Annotated[str, Field(max_length=LABEL_VALUE_MAX)]
ObjectName = Annotated[str, Field(max_length=NAME_MAX, pattern=DNS_LABEL_PATTERN)]
SOURCE_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?"
    r"|https://[^\s/]+(/[^\s]*)?)$"
)


class CelRule(BaseModel):
    """One ``x-kubernetes-validations`` entry."""

    rule: str
    message: str
    message_expression: str | None = None  # CEL string expression; wins over message when it evaluates
    field_path: str | None = None


def cel_rules(*rules: CelRule) -> dict[str, Any]:
    """Model config extra that attaches CEL rules to a model's schema (read by crd.py and _check_cel)."""
    return {
        "x-kubernetes-validations": [
            {
                "rule": r.rule,
                "message": r.message,
                **({"messageExpression": r.message_expression} if r.message_expression else {}),
                **({"fieldPath": r.field_path} if r.field_path else {}),
            }
            for r in rules
        ]
    }


# Whether model validation runs the CEL rules (``spec_errors.parse_spec(cel=False)`` turns them off;
# a context variable, so that nested models built from defaults follow it too).
CEL_CHECKS: ContextVar[bool] = ContextVar("CEL_CHECKS", default=True)


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected, CEL rules enforced."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
    )

    @model_validator(mode="after")
    def _check_cel(self) -> ApiModel:
        if not CEL_CHECKS.get():
            return self  # this generation passed them already (the API server checks them too)
        extra = self.model_config.get("json_schema_extra")
        rules = extra.get("x-kubernetes-validations") if isinstance(extra, dict) else None
        if isinstance(rules, list):
            from autoglm_operator.cel import evaluate_rules

            obj = self.model_dump(by_alias=True, exclude_none=True, mode="json")
            failures = evaluate_rules(rules, obj)  # type: ignore[arg-type]
            if failures:
                raise ValueError("; ".join(f"{path}: {msg}" if path else msg for path, msg in failures))
        return self


# --------------------------------------------------------------------------------------------
# spec.model
# --------------------------------------------------------------------------------------------


class ModelCache(ApiModel):
    """Where weights are cached. Either an existing claim or one the operator creates."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="has(self.claimName) != has(self.size)",
                message="set exactly one of claimName (use an existing PVC) or size (the operator creates one)",
            )
        )
    )

    claim_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
        description="Existing PersistentVolumeClaim to cache weights in.",
    )
    size: str | None = Field(
        None,
        pattern=QUANTITY_PATTERN,
        max_length=QUANTITY_MAX,
        description="Size of a cache PVC the operator creates, e.g. 40Gi.",
    )
    storage_class_name: str | None = Field(
        None, max_length=NAME_MAX, description="Storage class of the created PVC."
    )
    access_mode: str = Field(
        "ReadWriteOnce",
        max_length=16,
        pattern="^(ReadWriteOnce|ReadWriteMany|ReadWriteOncePod)$",
        description="Access mode of the created PVC; ReadWriteMany lets replicas on several nodes share it.",
    )


class ModelShape(ApiModel):
    """Hints for the memory estimator when the model is not in the built-in catalog (override it)."""

    parameters: int | None = Field(None, ge=1, description="Total parameter count.")
    num_layers: int | None = Field(None, ge=1, description="Decoder layers (num_hidden_layers).")
    num_kv_heads: int | None = Field(None, ge=1, description="Key/value heads (num_key_value_heads).")
    head_dim: int | None = Field(None, ge=1, description="Dimension of one attention head.")
    hidden_size: int | None = Field(None, ge=1, description="Hidden size.")
    vocab_size: int | None = Field(
        None, ge=1, description="Vocabulary size (embeddings stay 16-bit when quantized)."
    )
    tie_word_embeddings: StrictBool | None = Field(
        None, description="Whether lm_head shares the input embeddings."
    )


class ModelSpec(ApiModel):
    """Which model to serve and where its weights come from."""

    source: str = Field(
        ...,
        pattern=SOURCE_PATTERN,
        max_length=1024,
        description="Where the weights are: hf://org/name (Hugging Face hub), pvc://claim/path (a volume), "
        "or an https:// base URL of a hub mirror followed by /org/name.",
    )
    revision: str | None = Field(
        None,
        max_length=256,
        pattern=REVISION_PATTERN,
        description="Hub revision: a commit hash (recommended, reproducible), tag or branch.",
    )
    credentials_secret: str | None = Field(
        None,
        pattern=DNS_LABEL_PATTERN,
        max_length=253,
        description="Secret in the same namespace holding the hub token under key `token` (gated/private models).",
    )
    trust_remote_code: StrictBool = Field(
        False, description="Allow the model repository's own Python code to run."
    )
    served_model_name: str | None = Field(
        None, max_length=256, description="Model name clients pass in requests; default: the repository name."
    )
    cache: ModelCache | None = Field(
        None, description="Persistent weights cache; default: an emptyDir per pod."
    )
    shape: ModelShape | None = Field(
        None, description="Estimator hints for models outside the built-in catalog."
    )


# --------------------------------------------------------------------------------------------
# spec.quantization
# --------------------------------------------------------------------------------------------


class QuantizationMode(StrEnum):
    """Requested quantization; ``auto`` lets the operator pick the least lossy mode that fits."""

    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    NF4 = "nf4"
    FP4 = "fp4"
    AUTO = "auto"


class QuantizationOptions(ApiModel):
    """4-bit (nf4/fp4) options passed to bitsandbytes."""

    double_quant: StrictBool = Field(
        True, description="Quantize the quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: ComputeDtype = Field(ComputeDtype.BF16, description="Dtype 4-bit matmuls compute in.")


# --------------------------------------------------------------------------------------------
# spec.resources
# --------------------------------------------------------------------------------------------


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


class MemorySpec(ApiModel):
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

    gpu_memory_percent: int = Field(
        90,
        ge=10,
        le=100,
        description="Share of each GPU's memory the runtime may use (torch per-process fraction).",
    )
    host_memory_percent: int = Field(
        75,
        ge=10,
        le=100,
        description="Share of the container memory limit for offloaded weights (accelerate max_memory).",
    )
    headroom_percent: int = Field(
        10,
        ge=0,
        le=50,
        description="Margin kept free within the memory budget: by the fit check, and by the runtime "
        "when it sizes the KV-cache pool.",
    )
    skip_fit_check: StrictBool = Field(
        False, description="Create pods even when the estimate says the model does not fit (they may OOM)."
    )


# --------------------------------------------------------------------------------------------
# spec.serving
# --------------------------------------------------------------------------------------------


class SecretKeyRef(ApiModel):
    """A key of a Secret in the CR's namespace."""

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=253, description="Secret name.")
    key: str = Field("keys", max_length=253, description="Key in the Secret.")


class ServingSpec(ApiModel):
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

    port: int = Field(8000, ge=1024, le=65535, description="Container and Service port (non-root: >= 1024).")
    max_batch_size: int = Field(
        8, ge=1, le=256, description="Requests decoded together; 1 disables batching."
    )
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        le=1048576,
        description="Tokens one engine step runs (decode tokens of the running requests + prompt chunks); "
        "bounds the activation memory. Default: 2048 on a GPU, 512 on a CPU.",
    )
    kv_cache_tokens: int | None = Field(
        None,
        ge=1,
        le=100000000,
        description="Cap on the KV-cache pool, in tokens. Default: every block the memory budget leaves.",
    )
    prefix_caching: StrictBool = Field(
        True, description="Reuse the KV blocks of prompt prefixes seen before (shared system prompts)."
    )
    batch_window_ms: int = Field(5, ge=0, le=1000, description="Milliseconds to wait to fill a batch.")
    max_concurrent_requests: int = Field(64, ge=1, le=10000, description="Requests in flight per pod.")
    max_queue: int = Field(256, ge=0, le=100000, description="Waiting requests per pod; beyond it 429.")
    max_input_tokens: int = Field(
        4096, ge=1, le=1048576, description="Longest prompt in tokens; longer → 400."
    )
    max_new_tokens: int = Field(512, ge=1, le=1048576, description="Most tokens generated per request.")
    request_timeout_seconds: int = Field(300, ge=1, le=86400, description="Wall-clock limit per request.")
    max_body_bytes: int = Field(
        20 * 1048576,
        ge=1024,
        le=1073741824,
        description="Largest request body; larger → 413. 20 MiB holds a phone screenshot as a PNG data URL.",
    )
    max_images_per_request: int = Field(
        10, ge=0, le=256, description="Images one chat request may carry (vision models); more → 400."
    )
    max_image_pixels: int | None = Field(
        None,
        ge=12544,
        le=100000000,
        description="Pixels an image is resized to at most before it becomes tokens (the image processor's "
        "max_pixels; 28x28 pixels = 1 token); default: the model's own.",
    )
    image_url_hosts: list[
        Annotated[str, Field(max_length=NAME_MAX, pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
    ] = Field(
        default_factory=list,
        max_length=32,
        description="Hosts whose http(s) image URLs the runtime fetches (*.example.com for subdomains; public "
        "addresses only, same-host redirects, size and time limits); empty: only inline data: URLs.",
    )
    image_url_timeout_seconds: float = Field(
        10, ge=1, le=300, description="Time limit of one remote image fetch (with imageUrlHosts)."
    )
    image_url_max_bytes: int = Field(
        20 * 1048576, ge=1024, le=1073741824, description="Largest remote image fetched (with imageUrlHosts)."
    )
    max_decoded_pixels: int = Field(
        40000000,
        ge=1,
        le=1000000000,
        description="Largest image (width x height) decoded at all; bigger (decompression bombs) → 400.",
    )
    rate_limit_rps: float = Field(
        0, ge=0, le=100000, description="Requests per second per pod; 0 = unlimited."
    )
    rate_limit_per_key_rps: float = Field(
        0, ge=0, le=100000, description="Requests per second per API key; 0 = off."
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


# --------------------------------------------------------------------------------------------
# spec.autoscaling
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# spec.scheduling, image, probes, pdb, monitoring
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# spec.routing (Gateway API Inference Extension)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


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
        default_factory=list, max_length=8, description="Ready, Progressing, Degraded, MemoryFit, Autoscaling."
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


class AutoGLMDeployment(ApiModel):
    """The whole custom resource (for offline tools; the operator receives spec/status dicts from kopf)."""

    model_config = ConfigDict(extra="forbid")

    api_version: str = Field(API_VERSION, pattern=f"^{GROUP}/{VERSION}$", description="autoglm.io/v1alpha1")
    kind: str = Field(KIND, pattern=f"^{KIND}$", description=KIND)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Object metadata.")
    spec: AutoGLMDeploymentSpec = Field(..., description="Desired state.")
    status: AutoGLMDeploymentStatus | None = Field(None, description="Observed state.")

    JSON_SCHEMA_ROOTS: ClassVar[tuple[str, ...]] = ("spec", "status")
