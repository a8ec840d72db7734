"""End-to-end scenarios, shared by the emulated run and the ``cluster``-marked run.

Each takes a :class:`Harness` whose operator is not started yet. Checks that only the emulator can
make (counting writes, playing the Deployment controller) are guarded by ``h.emulated``; the
cluster run asserts what a real API server shows instead (unchanged resourceVersions).
"""

from __future__ import annotations

import copy
from typing import Any

from autoglm_operator import api
from autoglm_operator.reconcile import HASH_ANNOTATION

from .harness import Harness, reconciles

# GLM-4-9B in int8 on one L4: fits (≈10 GiB of 24), two to three replicas behind an HPA and a PDB.
SPEC: dict[str, Any] = {
    "model": {"source": "hf://THUDM/glm-4-9b-chat"},
    "quantization": "int8",
    "resources": {"gpu": {"count": 1, "product": "L4"}},
    "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
}
CHECKSUM = "autoglm.io/settings-checksum"


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    out.update(changes)
    return out


def _pod_template(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]


def _env(dep: dict[str, Any]) -> dict[str, str]:
    container = _pod_template(dep)["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


async def wait_children(h: Harness, name: str, kinds: set[str]) -> dict[str, dict[str, Any]]:
    async def check() -> dict[str, dict[str, Any]] | None:
        found = await h.children(name)
        return found if set(found) == kinds else None

    return await h.eventually(check, f"children {sorted(kinds)} of {name}")


async def create_becomes_ready(h: Harness, name: str = "chat") -> dict[str, Any]:
    """Create → children with owner refs, GPU limits and env → Progressing → (Deployment ready) → Ready."""
    cr = await h.create_cr(name, SPEC)
    uid = cr["metadata"]["uid"]
    kids = await wait_children(
        h, name, {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    )
    for kind, obj in kids.items():
        refs = obj["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
            (api.KIND, name, uid, True)
        ], f"{kind} owner references: {refs}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "autoglm-operator"
    dep = kids["Deployment"]
    container = _pod_template(dep)["spec"]["containers"][0]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert {"configMapRef": {"name": f"{name}-settings"}} in container["envFrom"]
    assert kids["ConfigMap"]["data"]["AUTOGLM_QUANTIZATION"] == "int8"
    assert _env(dep)["HF_HUB_OFFLINE"] == "1"
    # The HPA owns the replica count: the operator never applies spec.replicas (a real API server
    # defaults it to 1, so there the operator's managedFields entry is what tells).
    ours = [m for m in dep["metadata"].get("managedFields") or [] if m.get("manager") == "autoglm-operator"]
    assert ours, dep["metadata"].get("managedFields")
    if h.emulated:
        assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    else:
        assert all("f:replicas" not in (m.get("fieldsV1") or {}).get("f:spec", {}) for m in ours), ours
    assert kids["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2

    await h.wait_condition(name, "MemoryFit", "True")
    if h.emulated:
        await h.wait_condition(name, "Progressing", "True")
        await h.wait_condition(name, "Ready", "False")
        await h.set_deployment_ready(name, ready=1)  # spec.replicas absent = 1 for the Deployment
        ready = await h.wait_condition(name, "Ready", "True", "ReplicasReady")
        assert ready["observedGeneration"] == cr["metadata"]["generation"]
        await h.wait_condition(name, "Progressing", "False", "RolloutComplete")
        body = await h.get(api.KIND, name)
        status = body["status"]
        assert status["readyReplicas"] == 1
        assert status["quantization"] == "int8"
        assert status["estimatedGpuMemory"].endswith("Gi")
        assert status["estimate"]["fits"] is True
        assert (
            status["selector"] == f"app.kubernetes.io/name=autoglm-runtime,app.kubernetes.io/instance={name}"
        )
        assert status["endpoint"] == f"http://{name}.{h.namespace}.svc:8000/v1"
        assert status["observedGeneration"] == body["metadata"]["generation"]
        events = await h.eventually(lambda: _events_with(h, name, "Ready"), "a Normal Ready event on the CR")
        assert events[0]["type"] == "Normal"
    body = await h.get(api.KIND, name)
    assert not body["metadata"].get("finalizers"), f"the CR must carry no finalizer: {body['metadata']}"
    assert "kopf" not in (body.get("status") or {}), "kopf must keep its state out of status"
    return body


async def _events_with(h: Harness, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in await h.events_for(name) if e.get("reason") == reason]


async def update_rolls_pods(h: Harness, name: str = "chat") -> None:
    """Changing quantization updates the Deployment and its pod-template checksum; autoscaling off
    removes the HPA and the PDB goes with fewer than two replicas."""
    before = await h.get("Deployment", name)
    await h.patch_spec(name, {"quantization": "nf4"})

    async def updated() -> dict[str, Any] | None:
        settings = await h.get("ConfigMap", f"{name}-settings")
        dep = await h.get("Deployment", name)
        if settings and settings["data"].get("AUTOGLM_QUANTIZATION") == "nf4" and dep:
            return dep if dep["metadata"]["generation"] > before["metadata"]["generation"] else None
        return None

    after = await h.eventually(updated, "settings with nf4 and an updated Deployment")
    old_sum = _pod_template(before)["metadata"]["annotations"][CHECKSUM]
    new_sum = _pod_template(after)["metadata"]["annotations"][CHECKSUM]
    assert old_sum != new_sum, "the settings checksum must change so the pods roll"
    cr = await h.get(api.KIND, name)

    async def observed() -> bool:
        body = await h.get(api.KIND, name)
        return body["status"].get("observedGeneration") == cr["metadata"]["generation"] and (
            body["status"].get("quantization") == "nf4"
        )

    await h.eventually(observed, "status.quantization nf4 at the new generation")

    await h.patch_spec(name, {"autoscaling": None, "replicas": 1})
    await wait_children(h, name, {"ConfigMap", "Service", "Deployment"})
    dep = await h.get("Deployment", name)
    assert dep["spec"]["replicas"] == 1


async def invalid_spec_degrades(h: Harness, name: str, bad_spec: dict[str, Any], field: str) -> None:
    """A spec the operator rejects: Degraded names the field, one Warning, no children, no retry storm."""
    start = reconciles("invalid")
    await h.create_cr(name, bad_spec)
    cond = await h.wait_condition(name, "Degraded", "True", "InvalidSpec")
    assert field in cond["message"], cond
    ready = await h.condition(name, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    events = await h.eventually(lambda: _events_with(h, name, "InvalidSpec"), "a Warning InvalidSpec event")
    assert events[0]["type"] == "Warning"
    assert field in events[0]["message"]
    await h.settle(2.0)
    assert await h.children(name) == {}, "an invalid spec must touch no child"
    attempts = reconciles("invalid") - start
    assert 1 <= attempts <= 2, (
        f"{attempts} reconcile attempts in ~2 s: the operator must not retry an invalid spec"
    )
    assert len(await _events_with(h, name, "InvalidSpec")) == 1


async def fix_invalid_spec(h: Harness, name: str, good_spec: dict[str, Any]) -> None:
    """The operator keeps running: fixing the spec brings children and clears Degraded."""
    await h.patch_spec(name, good_spec)
    await wait_children(
        h, name, {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    )
    await h.wait_condition(name, "Degraded", "False")


async def deleted_child_is_recreated(h: Harness, name: str = "chat") -> None:
    service = await h.get("Service", name)
    assert await h.delete("Service", name)

    async def recreated() -> dict[str, Any] | None:
        svc = await h.get("Service", name)
        return svc if svc and svc["metadata"]["uid"] != service["metadata"]["uid"] else None

    svc = await h.eventually(recreated, "the deleted Service to come back")
    assert (
        svc["metadata"]["annotations"][HASH_ANNOTATION] == service["metadata"]["annotations"][HASH_ANNOTATION]
    )


async def delete_cr_collects_children(h: Harness, name: str = "chat") -> None:
    assert await h.delete(api.KIND, name)

    async def gone() -> bool:
        return await h.get(api.KIND, name) is None and await h.children(name) == {}

    await h.eventually(gone, "the CR and every child to be gone")


async def memory_does_not_fit(h: Harness, name: str = "big") -> None:
    """bf16 GLM-4-9B on a 16 GB T4 (no bf16, too small): MemoryFit=False with numbers, no Deployment."""
    bad = spec(quantization="bf16", resources={"gpu": {"count": 1, "product": "T4"}})
    await h.create_cr(name, bad)
    cond = await h.wait_condition(name, "MemoryFit", "False", "DoesNotFit")
    assert "GiB" in cond["message"] or "Gi" in cond["message"], cond
    degraded = await h.wait_condition(name, "Degraded", "True", "InsufficientGpuMemory")
    assert "skipFitCheck" in degraded["message"]
    await wait_children(h, name, {"ConfigMap", "Service"})
    body = await h.get(api.KIND, name)
    assert body["status"]["replicas"] == 0
    assert "endpoint" not in body["status"]
    events = await h.eventually(lambda: _events_with(h, name, "MemoryDoesNotFit"), "a MemoryDoesNotFit event")
    assert events[0]["type"] == "Warning"

    # A quantization that fits brings the workload.
    await h.patch_spec(name, {"quantization": "nf4", "serving": {"maxBatchSize": 2}})
    await wait_children(
        h, name, {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    )
    await h.wait_condition(name, "MemoryFit", "True")


# -- the autoscaler's own state on the CR ------------------------------------------------------

ADAPTER_MISSING = (
    "the HPA was unable to compute the replica count: unable to get metric autoglm_inflight_requests: "
    "unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered"
)


def hpa_status(active: bool, tick: int = 0) -> dict[str, Any]:
    """An HPA status as the HPA controller writes it every 15 s (the times and counts move each time)."""
    conds = [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale",
         "message": "the HPA controller was able to get the target's current scale"},
        {"type": "ScalingActive", "status": "True" if active else "False",
         "reason": "ValidMetricFound" if active else "FailedGetPodsMetric",
         "message": "the HPA was able to successfully calculate a replica count" if active else ADAPTER_MISSING},
    ]
    for cond in conds:
        cond["lastTransitionTime"] = f"2026-12-07T10:00:{tick % 60:02d}Z"
    return {"currentReplicas": 2, "desiredReplicas": 2 + tick % 2, "conditions": conds}


def keda_status(ready: bool) -> dict[str, Any]:
    return {
        "hpaName": "keda-hpa-x",
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False",
             "reason": "ScaledObjectReady" if ready else "KEDAScalerFailed",
             "message": "ScaledObject is defined correctly and is ready for scaling" if ready
             else "error establishing the connection to prometheus"},
            {"type": "Active", "status": "False", "reason": "ScalerNotActive", "message": "Scaling is not performed"},
        ],
    }


async def autoscaler_inactive_shows_on_the_cr(h: Harness, name: str = "scaled") -> None:
    """No custom metrics API: the HPA cannot read its metric, and the CR says so, with the fix, once.

    Against a real API server the HPA controller sets ScalingActive=False by itself (no adapter is
    installed there); the emulator plays the controller, rewriting the status like every 15 s."""
    await h.create_cr(name, SPEC)
    if h.emulated:
        await wait_children(
            h, name, {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
        )
        await h.wait_condition(name, "Autoscaling", "Unknown", "Pending")
        for tick in range(4):
            await h.set_status("HorizontalPodAutoscaler", name, hpa_status(active=False, tick=tick))
            await h.settle(0.1)
    cond = await h.wait_condition(name, "Autoscaling", "False", "FailedGetPodsMetric", timeout=60)
    assert "custom.metrics.k8s.io" in cond["message"], cond
    assert "deploy/prometheus-adapter/values.yaml" in cond["message"], cond
    assert "engine: keda" in cond["message"], cond
    # Serving is not degraded by it: the Degraded condition stays about serving.
    degraded = await h.condition(name, "Degraded")
    assert degraded is not None
    assert degraded["status"] == "False", degraded
    events = await h.eventually(
        lambda: _events_with(h, name, "AutoscalingInactive"), "a Warning AutoscalingInactive event"
    )
    assert events[0]["type"] == "Warning"
    assert "FailedGetPodsMetric" in events[0]["message"]
    await h.settle(2.0 if h.emulated else 20.0)  # a real HPA controller rewrites its status every 15 s
    assert len(await _events_with(h, name, "AutoscalingInactive")) == 1, "one Event per transition"
    if not h.emulated:
        return  # no metrics API on the real server: the recovery is the emulator's part
    await h.set_status("HorizontalPodAutoscaler", name, hpa_status(active=True))
    cond = await h.wait_condition(name, "Autoscaling", "True", "ScalingActive")
    events = await h.eventually(lambda: _events_with(h, name, "AutoscalingActive"), "a Normal AutoscalingActive")
    assert events[0]["type"] == "Normal"
    assert len(await _events_with(h, name, "AutoscalingInactive")) == 1


async def keda_scaled_object_replaces_the_hpa(h: Harness, name: str = "keda") -> None:
    """engine: keda renders a ScaledObject (no HPA of ours); its Ready condition becomes the CR's."""
    keda = spec(autoscaling={"minReplicas": 1, "maxReplicas": 3, "engine": "keda"})
    await h.create_cr(name, keda)
    so = await h.eventually(lambda: h.get("ScaledObject", name), "the ScaledObject")
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert f'namespace="{h.namespace}"' in trigger["metadata"]["query"]
    assert await h.get("HorizontalPodAutoscaler", name) is None
    if h.emulated:
        await h.set_status("ScaledObject", name, keda_status(ready=False))
        cond = await h.wait_condition(name, "Autoscaling", "False", "KEDAScalerFailed")
        assert "prometheus" in cond["message"]
        await h.set_status("ScaledObject", name, keda_status(ready=True))
        await h.wait_condition(name, "Autoscaling", "True", "ScaledObjectReady")
    else:  # no KEDA controller runs there: the ScaledObject was admitted, nobody evaluates it
        await h.wait_condition(name, "Autoscaling", "Unknown", "Pending")
    # Switching engines prunes the other object.
    await h.patch_spec(name, {"autoscaling": {"engine": "hpa"}})
    await h.eventually(lambda: h.get("HorizontalPodAutoscaler", name), "the HPA")

    async def pruned() -> bool:
        return await h.get("ScaledObject", name) is None

    await h.eventually(pruned, "the ScaledObject to be pruned")
