"""render(): what a CR becomes. Goldens for every example, Kubernetes schema validation, and the
behaviours users rely on (GPU scheduling, HPA/replicas, checksum rollouts, secrets by reference,
no pods that would OOM, restricted pod security, probes sized to the model)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm_operator import labels
from autoglm_operator.render import (
    SETTINGS_CHECKSUM_ANNOTATION,
    Rendered,
    SpecError,
    parse_spec,
    render,
)
from autoglm_runtime.fetch import layout
from autoglm_runtime.serving_settings import InSpec, Renamed
from autoglm_runtime.settings import RuntimeSettings, env_name
from tests.conftest import EXAMPLES
from tests.operator.render_helpers import OPERATOR_VERSION, by_kind, cr, validate_object

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def load(path: Path) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d)


def run(obj: dict[str, Any], **kw: Any) -> Rendered:
    return render(obj, operator_version=OPERATOR_VERSION, **kw)


def deployment(r: Rendered) -> dict[str, Any]:
    return by_kind(r.objects)["Deployment"]


def pod(r: Rendered) -> dict[str, Any]:
    return deployment(r)["spec"]["template"]["spec"]


def container(r: Rendered) -> dict[str, Any]:
    (c,) = pod(r)["containers"]
    return c


def settings(r: Rendered) -> dict[str, str]:
    return by_kind(r.objects)["ConfigMap"]["data"]


# ------------------------------------------------------------------------------------------------
# goldens and schema validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_matches_golden(path: Path) -> None:
    text = run(load(path)).to_yaml()
    golden = GOLDEN / f"{path.stem}.yaml"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden for {path.name}: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"render of {path.name} changed; review and rerun with UPDATE_GOLDEN=1"


def test_no_golden_without_an_example() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == {p.stem for p in EXAMPLES}


EVERYTHING = cr(
    uid="0b7e6f57-8d5c-4a0e-9f51-3c1b2e3a4d5e",
    model={
        "source": "https://mirror.example/hub/THUDM/glm-4-9b-chat",
        "revision": "refs/pr/1",
        "credentialsSecret": "hub-token",
        "trustRemoteCode": True,
        "servedModelName": "glm",
        "cache": {"size": "40Gi", "storageClassName": "fast", "accessMode": "ReadWriteMany"},
    },
    quantization="nf4",
    quantizationOptions={"doubleQuant": False, "computeDtype": "fp16"},
    serving={
        "port": 8443,
        "apiKeySecret": {"name": "keys", "key": "api-keys.txt"},
        "tlsSecret": "tls",
        "clientCaSecret": {"name": "client-ca", "key": "ca.crt"},
        "rateLimitRps": 5.5,
    },
    autoscaling={"minReplicas": 2, "maxReplicas": 6, "metric": "queue-depth", "target": 4},
    scheduling={
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "high",
        "runtimeClassName": "nvidia",
    },
    image={
        "repository": "registry.example/autoglm-runtime",
        "digest": "sha256:" + "a" * 64,
        "pullSecrets": ["reg"],
    },
    podDisruptionBudget={"minAvailable": 1},
    monitoring={"serviceMonitor": True, "interval": "15s", "labels": {"release": "prom"}},
)
PVC_SOURCE = cr(
    model={
        "source": "pvc://weights/models/my-glm",
        "shape": {
            "parameters": 9_400_000_000,
            "numLayers": 40,
            "numKvHeads": 2,
            "headDim": 128,
            "hiddenSize": 4096,
            "vocabSize": 151552,
        },
    },
    resources={"gpu": {"count": 0}, "limits": {"memory": "64Gi"}},
    replicas=3,
)
PHONE_AGENT_KEDA = copy.deepcopy(load(next(p for p in EXAMPLES if p.stem.startswith("autoglm-phone"))))
PHONE_AGENT_KEDA["spec"]["autoscaling"]["engine"] = "keda"
CASES = [
    *((p.stem, load(p)) for p in EXAMPLES),
    ("everything", EVERYTHING),
    ("pvc-source-cpu", PVC_SOURCE),
    ("phone-agent-keda", PHONE_AGENT_KEDA),
]


@pytest.mark.parametrize(("case", "obj"), CASES, ids=[c[0] for c in CASES])
def test_every_object_validates_against_kubernetes(case: str, obj: dict[str, Any]) -> None:
    r = run(obj)
    assert r.objects
    for o in r.objects:
        validate_object(o)


def test_validation_catches_a_misspelled_field() -> None:
    """The check above can fail: strict validation rejects an unknown field."""
    d = copy.deepcopy(deployment(run(cr())))
    d["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["periodSecond"] = 10
    with pytest.raises(Exception, match="periodSecond"):
        validate_object(d)


# ------------------------------------------------------------------------------------------------
# determinism, names, labels, owner references
# ------------------------------------------------------------------------------------------------


def _reversed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed(v) for v in value]
    return value


def test_render_is_deterministic_and_ignores_key_order() -> None:
    first = run(EVERYTHING).to_yaml()
    assert run(copy.deepcopy(EVERYTHING)).to_yaml() == first
    assert run(_reversed(EVERYTHING)).to_yaml() == first
    assert run(EVERYTHING).to_json() == run(_reversed(EVERYTHING)).to_json()


def test_objects_come_in_apply_order() -> None:
    kinds = [o["kind"] for o in run(EVERYTHING).objects]
    assert kinds == [
        "ConfigMap",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ]


def test_names_labels_and_owner_references() -> None:
    r = run(EVERYTHING)
    objs = by_kind(r.objects)
    assert objs["ConfigMap"]["metadata"]["name"] == "glm-settings"
    assert objs["PersistentVolumeClaim"]["metadata"]["name"] == "glm-model-cache"
    for kind in ("Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"):
        assert objs[kind]["metadata"]["name"] == "glm"
    for o in r.objects:
        meta = o["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"]["app.kubernetes.io/name"] == "autoglm-runtime"
        assert meta["labels"]["app.kubernetes.io/instance"] == "glm"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "autoglm-operator"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "autoglm"
        assert meta["labels"]["app.kubernetes.io/component"] == "inference"
        assert meta["labels"]["app.kubernetes.io/version"] == OPERATOR_VERSION
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "autoglm.io/v1alpha1",
            "kind": "AutoGLMDeployment",
            "name": "glm",
            "uid": EVERYTHING["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert objs["ServiceMonitor"]["metadata"]["labels"]["release"] == "prom"
    d = objs["Deployment"]
    selector = d["spec"]["selector"]["matchLabels"]
    assert selector == labels.selector_labels("glm")
    assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    assert objs["Service"]["spec"]["selector"] == selector
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector


def test_selector_does_not_change_with_the_version() -> None:
    old = run(cr(image={"tag": "1.0"}))
    new = run(cr(image={"tag": "2.0"}))
    assert deployment(old)["spec"]["selector"] == deployment(new)["spec"]["selector"]
    assert container(new)["image"] == "ghcr.io/autoglm/autoglm-runtime:2.0"


def test_offline_render_has_no_owner_references() -> None:
    for o in run(cr()).objects:
        assert "ownerReferences" not in o["metadata"]


# ------------------------------------------------------------------------------------------------
# GPUs and placement
# ------------------------------------------------------------------------------------------------


def test_gpu_limit_product_selector_and_toleration() -> None:
    r = run(cr(resources={"gpu": {"count": 2, "product": "L40S"}}))
    assert container(r)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod(r)["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S"}  # short name → GFD label value
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod(r)["tolerations"]
    init = pod(r)["initContainers"][0]
    assert "nvidia.com/gpu" not in init["resources"].get("limits", {}), "the fetch container needs no GPU"


def test_label_form_product_is_used_as_given() -> None:
    r = run(cr(resources={"gpu": {"count": 1, "product": "NVIDIA-A100-PCIE-40GB"}}))
    assert pod(r)["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-A100-PCIE-40GB"


def test_mig_resource_name_is_the_limit() -> None:
    r = run(cr(resources={"gpu": {"count": 1, "resourceName": "nvidia.com/mig-3g.40gb"}}))
    limits = container(r)["resources"]["limits"]
    assert limits["nvidia.com/mig-3g.40gb"] == 1
    assert "nvidia.com/gpu" not in limits
    assert "nodeSelector" not in pod(r), "no product given: no product selector"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod(r)["tolerations"])


def test_cpu_only_has_no_gpu_anything() -> None:
    r = run(PVC_SOURCE)
    assert "nvidia.com/gpu" not in container(r)["resources"].get("limits", {})
    assert "tolerations" not in pod(r)
    assert "nodeSelector" not in pod(r)


def test_user_scheduling_passes_through_and_wins() -> None:
    r = run(EVERYTHING)
    p = pod(r)
    assert p["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S", "zone": "a"}
    assert p["priorityClassName"] == "high"
    assert p["runtimeClassName"] == "nvidia"
    assert p["affinity"] == EVERYTHING["spec"]["scheduling"]["affinity"]
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in p[
        "tolerations"
    ]
    assert p["imagePullSecrets"] == [{"name": "reg"}]
    assert container(r)["image"] == "registry.example/autoglm-runtime@sha256:" + "a" * 64
    override = cr(scheduling={"nodeSelector": {"nvidia.com/gpu.product": "custom"}})
    assert pod(run(override))["nodeSelector"] == {"nvidia.com/gpu.product": "custom"}


# ------------------------------------------------------------------------------------------------
# replicas, HPA, PDB
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (
            "cpu",
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            },
        ),
        (
            "inflight-requests",
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "autoglm_inflight_requests"},
                    "target": {"type": "AverageValue", "averageValue": "70"},
                },
            },
        ),
        (
            "queue-depth",
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "autoglm_queue_depth"},
                    "target": {"type": "AverageValue", "averageValue": "70"},
                },
            },
        ),
    ],
)
def test_hpa_owns_replicas(metric: str, expected: dict[str, Any]) -> None:
    r = run(cr(replicas=2, autoscaling={"minReplicas": 1, "maxReplicas": 5, "metric": metric, "target": 70}))
    objs = by_kind(r.objects)
    assert "replicas" not in objs["Deployment"]["spec"], "the HPA owns spec.replicas"
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "glm"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 5)
    assert hpa["metrics"] == [expected]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_fixed_replicas_without_autoscaling() -> None:
    assert deployment(run(cr()))["spec"]["replicas"] == 1
    assert deployment(run(cr(replicas=3)))["spec"]["replicas"] == 3
    off = run(cr(replicas=2, autoscaling={"enabled": False, "minReplicas": 1, "maxReplicas": 4}))
    assert deployment(off)["spec"]["replicas"] == 2
    assert "HorizontalPodAutoscaler" not in by_kind(off.objects)


def test_pdb_only_when_more_than_one_pod_must_stay() -> None:
    assert "PodDisruptionBudget" not in by_kind(run(cr(replicas=1)).objects)
    two = by_kind(run(cr(replicas=2)).objects)["PodDisruptionBudget"]["spec"]
    assert two["maxUnavailable"] == 1
    assert two["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "PodDisruptionBudget" not in by_kind(
        run(cr(replicas=2, podDisruptionBudget={"enabled": False})).objects
    )
    scaled = run(
        cr(autoscaling={"minReplicas": 2, "maxReplicas": 4}, podDisruptionBudget={"minAvailable": 1})
    )
    assert by_kind(scaled.objects)["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


# ------------------------------------------------------------------------------------------------
# settings ConfigMap and rollouts
# ------------------------------------------------------------------------------------------------


def test_configmap_is_what_the_runtime_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key is a runtime setting's env var, and the runtime accepts the values as they are."""
    r = run(EVERYTHING)
    data = settings(r)
    names = {env_name(f) for f in RuntimeSettings.model_fields}
    assert set(data) <= names
    assert container(r)["envFrom"] == [{"configMapRef": {"name": "glm-settings"}}]
    for key in list(os.environ):
        if key.startswith("AUTOGLM_"):
            monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    s = RuntimeSettings()  # type: ignore[call-arg]
    assert s.quantization.value == "nf4"
    assert s.double_quant is False
    assert s.compute_dtype.value == "fp16"
    assert s.port == 8443
    assert s.served_model_name == "glm"
    assert s.trust_remote_code is True
    assert s.rate_limit_rps == 5.5
    assert s.tls_enabled
    assert s.shutdown_grace_s == RuntimeSettings.model_fields["shutdown_grace_s"].default


def test_auto_quantization_is_resolved_in_the_configmap() -> None:
    r = run(cr(quantization="auto"))
    assert r.plan.requested == "auto"
    assert settings(r)["AUTOGLM_QUANTIZATION"] == r.plan.quantization != "auto"


def test_settings_change_rolls_the_pods() -> None:
    base = run(cr())
    changed = run(cr(serving={"maxNewTokens": 1024}))
    ann = SETTINGS_CHECKSUM_ANNOTATION
    assert base.settings_checksum != changed.settings_checksum
    assert deployment(base)["spec"]["template"]["metadata"]["annotations"][ann] == base.settings_checksum
    assert (
        deployment(changed)["spec"]["template"]["metadata"]["annotations"][ann] == changed.settings_checksum
    )
    # a change that is not a runtime setting leaves the checksum alone
    assert run(cr(replicas=3)).settings_checksum == base.settings_checksum


def test_4bit_options_only_for_4bit_modes() -> None:
    assert "AUTOGLM_DOUBLE_QUANT" not in settings(run(cr(quantization="int8")))
    assert settings(run(cr(quantization="fp4")))["AUTOGLM_COMPUTE_DTYPE"] == "bf16"


# ------------------------------------------------------------------------------------------------
# weights: fetch init container, caches, pvc:// sources
# ------------------------------------------------------------------------------------------------


def test_hub_source_is_fetched_where_the_runtime_loads_it() -> None:
    r = run(cr(model={"source": "hf://THUDM/glm-4-9b-chat", "revision": "abc123", "credentialsSecret": "hf"}))
    (init,) = pod(r)["initContainers"]
    assert init["name"] == "fetch"
    assert init["image"] == container(r)["image"]
    assert init["command"][:2] == ["autoglm-runtime", "fetch"]
    args = init["command"]
    assert args[args.index("--model") + 1] == "hf://THUDM/glm-4-9b-chat"
    assert args[args.index("--revision") + 1] == "abc123"
    cache_dir = args[args.index("--cache-dir") + 1]
    expected = layout.model_dir(cache_dir, "hf://THUDM/glm-4-9b-chat", "abc123").as_posix()
    assert settings(r)["AUTOGLM_MODEL"] == expected
    token = next(e for e in init["env"] if e["name"] == "HF_TOKEN")
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert {"name": "models", "mountPath": cache_dir} in init["volumeMounts"]
    mount = next(m for m in container(r)["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True
    assert {"name": "models", "emptyDir": {}} in pod(r)["volumes"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container(r)["env"]


def test_mirror_source_and_cache_pvc() -> None:
    r = run(EVERYTHING)
    init = pod(r)["initContainers"][0]
    assert (
        init["command"][init["command"].index("--model") + 1]
        == "https://mirror.example/hub/THUDM/glm-4-9b-chat"
    )
    assert "--trust-remote-code" in init["command"]
    assert settings(r)["AUTOGLM_MODEL"] == "/models/THUDM--glm-4-9b-chat/refs--pr--1"
    pvc = by_kind(r.objects)["PersistentVolumeClaim"]["spec"]
    assert pvc == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "fast",
        "resources": {"requests": {"storage": "40Gi"}},
    }
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "glm-model-cache"}} in pod(r)["volumes"]


def test_existing_cache_claim_is_used_and_not_created() -> None:
    r = run(cr(model={"source": "hf://THUDM/glm-4-9b-chat", "cache": {"claimName": "shared"}}))
    assert "PersistentVolumeClaim" not in by_kind(r.objects)
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "shared"}} in pod(r)["volumes"]


def test_pvc_source_mounts_the_claim_read_only_without_fetching() -> None:
    r = run(PVC_SOURCE)
    assert "initContainers" not in pod(r)
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod(r)[
        "volumes"
    ]
    assert settings(r)["AUTOGLM_MODEL"] == "/models/models/my-glm"
    assert settings(r)["AUTOGLM_SERVED_MODEL_NAME"] == "my-glm"


def test_read_only_root_gets_writable_caches() -> None:
    r = run(cr())
    env = {e["name"]: e.get("value") for e in container(r)["env"]}
    assert env["HOME"] == "/tmp"
    assert env["HF_HOME"].startswith("/tmp/")
    assert {"name": "tmp", "mountPath": "/tmp"} in container(r)["volumeMounts"]


# ------------------------------------------------------------------------------------------------
# secrets: by reference only
# ------------------------------------------------------------------------------------------------


def test_secrets_are_mounted_by_name_and_paths_match_the_settings() -> None:
    r = run(EVERYTHING)
    data = settings(r)
    vols = {v["name"]: v for v in pod(r)["volumes"]}
    mounts = {m["name"]: m for m in container(r)["volumeMounts"]}

    def file_of(volume: str, key: str) -> str:
        items = vols[volume]["secret"]["items"]
        (item,) = [i for i in items if i["key"] == key]
        assert mounts[volume]["readOnly"] is True
        return f"{mounts[volume]['mountPath']}/{item['path']}"

    assert vols["api-keys"]["secret"]["secretName"] == "keys"
    assert data["AUTOGLM_API_KEYS_FILE"] == file_of("api-keys", "api-keys.txt")
    assert vols["tls"]["secret"]["secretName"] == "tls"
    assert data["AUTOGLM_TLS_CERT_FILE"] == file_of("tls", "tls.crt")
    assert data["AUTOGLM_TLS_KEY_FILE"] == file_of("tls", "tls.key")
    assert data["AUTOGLM_TLS_CLIENT_CA_FILE"] == file_of("client-ca", "ca.crt")
    assert not any(o["kind"] == "Secret" for o in r.objects)


def test_no_literal_value_for_any_credential() -> None:
    for o in run(EVERYTHING).objects:
        if o["kind"] != "Deployment":
            continue
        spec = o["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for e in c.get("env", []):
                if "TOKEN" in e["name"] or "KEY" in e["name"] or "PASSWORD" in e["name"]:
                    assert "value" not in e, e
                    assert "secretKeyRef" in e["valueFrom"], e


# ------------------------------------------------------------------------------------------------
# memory fit
# ------------------------------------------------------------------------------------------------


def test_does_not_fit_renders_no_pods() -> None:
    big = cr(quantization="bf16", resources={"gpu": {"count": 1, "product": "T4"}})
    r = run(big)
    kinds = {o["kind"] for o in r.objects}
    assert kinds == {"ConfigMap", "Service"}
    assert not r.plan.fits
    assert r.deployment_skipped_reason is not None
    assert "GiB" in r.deployment_skipped_reason
    assert "skipFitCheck" in r.deployment_skipped_reason
    forced = copy.deepcopy(big)
    forced["spec"]["memory"] = {"skipFitCheck": True}
    r2 = run(forced)
    assert r2.deployment_skipped_reason is None
    assert "Deployment" in {o["kind"] for o in r2.objects}


def test_fitting_plan_has_no_skip_reason() -> None:
    r = run(cr())
    assert r.plan.fits
    assert r.deployment_skipped_reason is None


# ------------------------------------------------------------------------------------------------
# pod security, probes, shutdown
# ------------------------------------------------------------------------------------------------


def test_restricted_pod_security() -> None:
    r = run(EVERYTHING)
    p = pod(r)
    assert p["automountServiceAccountToken"] is False
    assert p["enableServiceLinks"] is False
    sc = p["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in [*p["initContainers"], *p["containers"]]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"] == {"drop": ["ALL"]}


def test_startup_budget_grows_with_the_model_and_can_be_set() -> None:
    def startup(obj: dict[str, Any]) -> int:
        probe = container(run(obj))["startupProbe"]
        assert probe["httpGet"]["path"] == "/readyz"
        return probe["periodSeconds"] * probe["failureThreshold"]

    small = cr(model={"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}, quantization="bf16")
    big = cr()
    assert startup(small) >= 120
    # GLM-4-9B's ~18.8 GB checkpoint at 50 MB/s is over six minutes on top of the fixed part
    assert startup(big) >= 120 + 18_000_000_000 // 50_000_000
    assert startup(cr(probes={"startupTimeoutSeconds": 1800})) >= 1800
    assert startup(cr(probes={"startupTimeoutSeconds": 1800})) < 1800 + 10


def test_liveness_and_readiness() -> None:
    c = container(run(cr(probes={"livenessFailureThreshold": 7})))
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert c["livenessProbe"]["failureThreshold"] == 7
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    tls = container(run(cr(serving={"tlsSecret": "t"})))
    assert tls["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_mtls_probes_fall_back_to_tcp() -> None:
    """The kubelet has no client certificate; an HTTPS probe against mTLS would never pass."""
    c = container(run(EVERYTHING))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["tcpSocket"] == {"port": "http"}


def test_graceful_shutdown_fits_in_the_grace_period() -> None:
    r = run(cr())
    sleep = container(r)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod(r)["terminationGracePeriodSeconds"]
    drain = float(settings(r)["AUTOGLM_SHUTDOWN_GRACE_S"])
    assert sleep > 0
    assert grace > sleep + drain


def test_service_exposes_the_one_port() -> None:
    r = run(cr(serving={"port": 9000}))
    svc = by_kind(r.objects)["Service"]["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["ports"][0]["name"] == "http"
    assert svc["ports"][0]["port"] == 9000
    assert container(r)["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert settings(r)["AUTOGLM_PORT"] == "9000"


def test_service_monitor_scrapes_metrics() -> None:
    sm = by_kind(run(cr(monitoring={"serviceMonitor": True})).objects)["ServiceMonitor"]["spec"]
    assert sm["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "scheme": "http"}]
    assert "ServiceMonitor" not in by_kind(run(cr()).objects)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "path", "text"),
    [
        (cr(autoscaling={"minReplicas": 5, "maxReplicas": 2}), "spec.autoscaling.minReplicas", "maxReplicas"),
        (cr(resources={"gpu": {"cont": 1}}), "spec.resources.gpu.cont", "unknown field"),
        (cr(model={"source": "s3://b/m"}), "spec.model.source", "hf://org/name"),
        (cr(serving={"maxBatchSize": 0}), "spec.serving.maxBatchSize", "greater than or equal to 1"),
        (cr(quantization="int4"), "spec.quantization", "'none'"),
        (cr(model={"source": "hf://THUDM/glm-4-9b-chat", "cache": {}}), "spec.model.cache", "exactly one"),
        (
            cr(model={"source": "hf://THUDM/glm-4-9b-chat", "revision": "bad revision"}),
            "spec.model.revision",
            "revision",
        ),
        (cr(model={"source": "hf://someone/unknown-model"}), "spec.model", ""),
        ({"kind": "AutoGLMDeployment", "metadata": {"name": "x"}}, "spec", "missing"),
        ({**cr(), "metadata": {"name": "9-starts-with-digit"}}, "metadata.name", "letter"),
        ({**cr(), "metadata": {}}, "metadata.name", "required"),
        ({**cr(), "kind": "Deployment"}, "kind", "AutoGLMDeployment"),
    ],
)
def test_bad_cr_names_the_field(obj: dict[str, Any], path: str, text: str) -> None:
    with pytest.raises(SpecError) as info:
        run(obj)
    assert info.value.field_path.startswith(path), info.value
    assert text in info.value.message, info.value


def test_parse_spec_returns_the_typed_spec() -> None:
    spec = parse_spec(cr(replicas=2))
    assert spec.replicas == 2
    assert spec.model.source == "hf://THUDM/glm-4-9b-chat"


def test_user_strings_cannot_break_the_yaml() -> None:
    """Values are embedded as JSON: newlines, quotes, YAML syntax and non-BMP characters stay data."""
    tricky = {
        "a": "x\nkind: Secret",
        "b": "'\"{}[]&*!|>%@`",
        "c": "\U00010000 😀 \x85 \u2028",
        "d": "\\ud800",
    }
    r = run(
        cr(scheduling={"nodeSelector": tricky}, monitoring={"serviceMonitor": True, "labels": {"l": "😀"}})
    )
    assert pod(r)["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S", **tricky}
    assert by_kind(r.objects)["ServiceMonitor"]["metadata"]["labels"]["l"] == "😀"
    assert [d for d in yaml.safe_load_all(r.to_yaml()) if d] == r.objects


def test_rollout_deadline_covers_fetch_and_load() -> None:
    """A rollout is not marked failed while a new pod is still fetching and loading its weights."""
    d = deployment(run(cr(probes={"startupTimeoutSeconds": 3000})))
    assert d["spec"]["progressDeadlineSeconds"] > 3000 + 18_000_000_000 // 50_000_000
    on_volume = deployment(run(PVC_SOURCE))["spec"]["progressDeadlineSeconds"]
    fetched = deployment(
        run(
            {
                **PVC_SOURCE,
                "spec": {
                    **PVC_SOURCE["spec"],
                    "model": {**PVC_SOURCE["spec"]["model"], "source": "hf://THUDM/glm-4-9b-chat"},
                },
            }
        )
    )
    assert fetched["spec"]["progressDeadlineSeconds"] > on_volume


def test_hpa_metric_names_are_the_runtime_gauges() -> None:
    from autoglm_operator.autoscaling import POD_METRICS
    from autoglm_runtime import metrics

    assert set(POD_METRICS.values()) == {metrics.INFLIGHT_REQUESTS, metrics.QUEUE_DEPTH}


def test_image_limits_reach_the_runtime_settings() -> None:
    r = run(
        cr(
            serving={
                "maxImagesPerRequest": 2,
                "maxImagePixels": 1000000,
                "maxDecodedPixels": 9000000,
                "maxBodyBytes": 8388608,
                "imageUrlHosts": ["screens.example.com", "*.cdn.example.com"],
                "imageUrlTimeoutSeconds": 5,
                "imageUrlMaxBytes": 4194304,
            }
        )
    )
    data = settings(r)
    assert data["AUTOGLM_MAX_IMAGES_PER_REQUEST"] == "2"
    assert data["AUTOGLM_MAX_IMAGE_PIXELS"] == "1000000"
    assert data["AUTOGLM_MAX_DECODED_PIXELS"] == "9000000"
    assert data["AUTOGLM_MAX_BODY_BYTES"] == "8388608"
    assert data["AUTOGLM_IMAGE_URL_HOSTS"] == "screens.example.com,*.cdn.example.com"
    assert data["AUTOGLM_IMAGE_URL_TIMEOUT_SECONDS"] == "5.0"
    assert data["AUTOGLM_IMAGE_URL_MAX_BYTES"] == "4194304"
    assert "AUTOGLM_IMAGE_URL_HOSTS" not in settings(run(cr()))


def test_token_budget_pool_and_headroom_reach_the_runtime_settings() -> None:
    data = settings(
        run(
            cr(
                serving={"maxBatchTokens": 4096, "kvCacheTokens": 100000, "prefixCaching": False},
                memory={"headroomPercent": 15},
            )
        )
    )
    assert data["AUTOGLM_MAX_BATCH_TOKENS"] == "4096"
    assert data["AUTOGLM_KV_CACHE_TOKENS"] == "100000"
    assert data["AUTOGLM_PREFIX_CACHING"] == "false"
    assert data["AUTOGLM_HEADROOM_PERCENT"] == "15"
    defaults = settings(run(cr()))
    assert "AUTOGLM_MAX_BATCH_TOKENS" not in defaults  # the runtime's device default
    assert "AUTOGLM_KV_CACHE_TOKENS" not in defaults  # the pool takes what the budget leaves
    assert defaults["AUTOGLM_PREFIX_CACHING"] == "true"
    assert defaults["AUTOGLM_HEADROOM_PERCENT"] == "10"


def test_headroom_bounds_match_the_runtime_setting() -> None:
    from autoglm_operator import api

    ours = api.MemorySpec.model_fields["headroom_percent"].metadata
    theirs = RuntimeSettings.model_fields["headroom_percent"].metadata
    # the declaration's bounds, not its markers (where the CR field lives, its deprecated name)
    assert ours == [m for m in theirs if not isinstance(m, InSpec | Renamed)]
    assert api.MemorySpec.model_fields["headroom_percent"].default == (
        RuntimeSettings.model_fields["headroom_percent"].default
    )


# ------------------------------------------------------------------------------------------------
# autoscaling: the default target, KEDA
# ------------------------------------------------------------------------------------------------


def _hpa_target(r: Rendered) -> str:
    return by_kind(r.objects)["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["target"]["averageValue"]


def test_default_target_is_what_one_replica_holds() -> None:
    scaled = {"minReplicas": 1, "maxReplicas": 4}
    # int8 GLM-4-9B on an L40S holds many full-length requests: the batch size bounds it.
    assert _hpa_target(run(cr(autoscaling=scaled))) == "8"
    assert _hpa_target(run(cr(autoscaling=scaled, serving={"maxBatchSize": 4}))) == "4"
    queue = run(cr(autoscaling={**scaled, "metric": "queue-depth"}, serving={"maxBatchSize": 4}))
    assert by_kind(queue.objects)["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": "2",
    }
    cpu = by_kind(run(cr(autoscaling={**scaled, "metric": "cpu"})).objects)["HorizontalPodAutoscaler"]
    assert cpu["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    # A KV pool that holds fewer full-length requests than the batch size bounds the target instead.
    long_ctx = run(
        cr(
            autoscaling=scaled,
            resources={"gpu": {"count": 1, "product": "L4"}},
            serving={"maxBatchSize": 16, "maxInputTokens": 32000, "maxNewTokens": 4000},
        )
    )
    full = long_ctx.plan.chosen.concurrent_full_requests
    assert full is not None
    assert 1 <= full < 16
    assert _hpa_target(long_ctx) == str(full)


def test_keda_engine_renders_a_scaled_object_and_no_hpa() -> None:
    r = run(
        cr(
            uid="u-1",
            autoscaling={"minReplicas": 2, "maxReplicas": 6, "engine": "keda", "target": 3},
        ),
        prometheus_address="http://prom.monitoring.svc:9090",
    )
    objs = by_kind(r.objects)
    assert "HorizontalPodAutoscaler" not in objs
    assert "replicas" not in objs["Deployment"]["spec"], "KEDA's HPA owns spec.replicas"
    so = objs["ScaledObject"]
    validate_object(so)
    assert so["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "glm"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    assert spec["triggers"] == [
        {
            "type": "prometheus",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": "http://prom.monitoring.svc:9090",
                "query": 'sum(autoglm_inflight_requests{namespace="ml",pod=~"glm-[a-z0-9]+-[a-z0-9]+"})',
                "threshold": "3",
            },
        }
    ]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    # The CR's own address wins over the operator's.
    own = run(cr(autoscaling={"engine": "keda", "prometheusAddress": "https://thanos.example:9091"}))
    assert by_kind(own.objects)["ScaledObject"]["spec"]["triggers"][0]["metadata"]["serverAddress"] == (
        "https://thanos.example:9091"
    )
    cpu = by_kind(run(cr(autoscaling={"engine": "keda", "metric": "cpu"})).objects)["ScaledObject"]
    validate_object(cpu)
    assert cpu["spec"]["triggers"] == [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}]


def test_keda_schema_check_can_fail() -> None:
    so = copy.deepcopy(by_kind(run(cr(autoscaling={"engine": "keda"})).objects)["ScaledObject"])
    so["spec"]["minReplicas"] = 1  # HPA's name, not KEDA's
    with pytest.raises(Exception, match="minReplicas"):
        validate_object(so)


def test_pod_query_matches_only_this_deployments_pods() -> None:
    import re

    from autoglm_operator.autoscaling import pod_query

    regex = re.search(r'pod=~"([^"]+)"', pod_query("m", "ml", "glm")).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(regex, "glm-7d9f8b6c5-x2k4q")
    assert not re.fullmatch(regex, "glm-big-7d9f8b6c5-x2k4q")
    assert not re.fullmatch(regex, "glm2-7d9f8b6c5-x2k4q")


def test_prometheus_address_only_for_keda() -> None:
    with pytest.raises(SpecError, match="prometheusAddress"):
        run(cr(autoscaling={"prometheusAddress": "http://prom:9090"}))
