"""The real operator (kopf, the ``autoglm-operator run`` code path) against an emulated API server.

Every scenario runs the operator in-process and talks to the API over HTTP. What the emulator does
not model (real server-side apply field ownership and conflicts, strategic merge, schema/CEL
validation, admission, RBAC, GC propagation policies, controllers) is listed in ``emulator.py``
and in ``docs/operator.md``; the ``cluster``-marked module runs the same scenarios against a real
API server.
"""

from __future__ import annotations

import asyncio

from autoglm_operator import api

from . import scenarios
from .harness import Harness, reconciles

CHILD_TARGETS = {"configmaps", "services", "deployments", "horizontalpodautoscalers", "poddisruptionbudgets"}


def _child_writes(writes: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: n for key, n in writes.items() if key[1].split("/")[0] in CHILD_TARGETS}


async def test_create_becomes_ready_with_owned_children(harness: Harness) -> None:
    await harness.start_operator()
    await scenarios.create_becomes_ready(harness)
    writes = harness.operator_writes()
    # One server-side apply per child and no other child write.
    assert _child_writes(writes) == {
        ("apply", "configmaps"): 1,
        ("apply", "services"): 1,
        ("apply", "deployments"): 1,
        ("apply", "horizontalpodautoscalers"): 1,
        ("apply", "poddisruptionbudgets"): 1,
    }, writes
    assert writes[("patch", "autoglmdeployments/status")] == 2, writes  # Progressing, then Ready
    # Kopf writes nothing on the CR (no change-detection handlers: no annotations, never the spec).
    cr_writes = {k: n for k, n in harness.kopf_writes().items() if k[1].startswith("autoglmdeployments")}
    assert cr_writes == {}, cr_writes
    cr = await harness.get(api.KIND, "chat")
    assert not any(k.startswith("autoglm.io/") for k in cr["metadata"].get("annotations", {}))
    assert cr["metadata"]["generation"] == 1, "nobody may write the spec"
    # And the operator's own client read nothing: the CR and its children come from the watches.
    assert harness.emulator.reads_by("operator") == {}


async def test_resync_without_change_writes_nothing(harness: Harness) -> None:
    await harness.start_operator(resync_seconds=0.3)
    await scenarios.create_becomes_ready(harness)
    await harness.settle(0.5)
    before_writes = dict(harness.emulator.writes)
    before_reads = dict(harness.emulator.reads)
    before_versions = {
        k: o["metadata"]["resourceVersion"] for k, o in (await harness.children("chat")).items()
    }
    cr_version = (await harness.get(api.KIND, "chat"))["metadata"]["resourceVersion"]
    start = reconciles("unchanged")

    async def ticked() -> bool:
        return reconciles("unchanged") - start >= 3

    await harness.eventually(ticked, "three resync reconciles")
    new_writes = {k: n - before_writes.get(k, 0) for k, n in harness.emulator.writes.items()}
    new_writes = {k: n for k, n in new_writes.items() if n and k[0] != "test"}
    assert new_writes == {}, f"a resync with no spec change wrote: {new_writes}"
    # ... and read nothing either: no GET, no LIST (a real API server pays for each), by anyone but
    # the test itself. Kopf's watches stay open.
    new_reads = {k: n - before_reads.get(k, 0) for k, n in harness.emulator.reads.items()}
    new_reads = {k: n for k, n in new_reads.items() if n and k[0] != "test"}
    assert new_reads == {}, f"an idle resync read: {new_reads}"
    after_versions = {
        k: o["metadata"]["resourceVersion"] for k, o in (await harness.children("chat")).items()
    }
    assert after_versions == before_versions
    assert (await harness.get(api.KIND, "chat"))["metadata"]["resourceVersion"] == cr_version


async def test_spec_change_updates_deployment_and_prunes(harness: Harness) -> None:
    await harness.start_operator()
    await scenarios.create_becomes_ready(harness)
    before = dict(harness.operator_writes())
    await scenarios.update_rolls_pods(harness)
    after = harness.operator_writes()
    delta = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
    # Quantization change: the settings ConfigMap and the Deployment (checksum) are re-applied, nothing else;
    # autoscaling off: the Deployment gets replicas, the HPA and the PDB are deleted.
    assert delta[("apply", "configmaps")] == 1, delta
    assert delta[("apply", "deployments")] == 2, delta
    assert delta[("delete", "horizontalpodautoscalers")] == 1, delta
    assert delta[("delete", "poddisruptionbudgets")] == 1, delta
    assert ("apply", "services") not in delta, delta


async def test_invalid_spec_degrades_without_retry_storm(harness: Harness) -> None:
    await harness.start_operator()
    bad = scenarios.spec(
        autoscaling={"minReplicas": 5, "maxReplicas": 2}
    )  # the API server's CEL would refuse it
    await scenarios.invalid_spec_degrades(harness, "broken", bad, "spec.autoscaling.minReplicas")
    writes = harness.operator_writes()
    assert _child_writes(writes) == {}, writes
    assert writes[("patch", "autoglmdeployments/status")] == 1, writes
    # The operator is still working: the fixed spec reconciles.
    await scenarios.fix_invalid_spec(harness, "broken", {"autoscaling": {"minReplicas": 2, "maxReplicas": 3}})


async def test_bad_source_scheme_names_the_field(harness: Harness) -> None:
    await harness.start_operator()
    bad = scenarios.spec(model={"source": "s3://bucket/model"})
    await scenarios.invalid_spec_degrades(harness, "s3", bad, "spec.model.source")


async def test_deleted_child_is_recreated_and_cr_deletion_collects_children(harness: Harness) -> None:
    await harness.start_operator()
    await scenarios.create_becomes_ready(harness)
    await scenarios.deleted_child_is_recreated(harness)
    await scenarios.delete_cr_collects_children(harness)


async def test_memory_does_not_fit(harness: Harness) -> None:
    await harness.start_operator()
    await scenarios.memory_does_not_fit(harness)
    assert ("apply", "deployments") in harness.operator_writes()


async def test_transient_api_errors_are_retried(harness: Harness) -> None:
    harness.emulator.fail_next[("apply", "deployments")] = [503, 429]
    start = reconciles("retrying")
    await harness.start_operator()
    await harness.create_cr("flaky", scenarios.SPEC)
    await scenarios.wait_children(
        harness,
        "flaky",
        {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
    )
    assert reconciles("retrying") - start == 2
    assert harness.emulator.writes[("operator", "apply", "deployments")] == 3


async def test_no_finalizer_even_with_the_resync_daemon(harness: Harness) -> None:
    """Deleting the CR while the operator is stopped still works: nothing blocks deletion."""
    await harness.start_operator(resync_seconds=0.2)
    await scenarios.create_becomes_ready(harness)
    await harness.stop_operator()
    assert await harness.delete(api.KIND, "chat")
    assert await harness.get(api.KIND, "chat") is None
    assert await harness.children("chat") == {}


async def test_service_monitor_without_its_crd_is_a_warning(harness: Harness) -> None:
    await harness.start_operator()
    await harness.create_cr("mon", scenarios.spec(monitoring={"serviceMonitor": True}))
    cond = await harness.wait_condition("mon", "Degraded", "False", "AsExpectedWithWarnings")
    assert "ServiceMonitor" in cond["message"]
    assert "monitoring.coreos.com" in cond["message"]
    kids = await harness.children("mon")
    assert "Deployment" in kids


async def _failing_child_is_reported_and_recovers(
    harness: Harness, code: int, target: str, kind: str
) -> None:
    harness.emulator.fail_next[("apply", target)] = [code] * 10_000  # fails until cleared
    await harness.start_operator(resync_seconds=0.5)
    await harness.create_cr("stuck", scenarios.SPEC)
    cond = await harness.wait_condition("stuck", "Degraded", "True", "ApplyFailed")
    # The object and the API server's own message, no stack trace.
    assert f"{kind} {harness.namespace}/stuck" in cond["message"], cond
    assert f"injected {code} for apply {target}" in cond["message"], cond
    assert "Traceback" not in cond["message"]

    async def warned() -> list[dict]:
        return [e for e in await harness.events_for("stuck") if e.get("reason") == "ApplyFailed"]

    events = await harness.eventually(warned, "a Warning Event ApplyFailed")
    assert events[0]["type"] == "Warning"
    assert kind in events[0]["message"]
    attempts = harness.emulator.writes[("operator", "apply", target)]
    await harness.eventually(
        lambda: asyncio.sleep(0, harness.emulator.writes[("operator", "apply", target)] > attempts + 1),
        "retries going on after the report",
    )
    assert len(await warned()) == 1, "one Event per failure, not one per retry"

    harness.emulator.fail_next.pop(("apply", target))
    await harness.wait_condition("stuck", "Degraded", "False")
    assert kind in await harness.children("stuck")

    async def recovered() -> bool:
        return any(e.get("reason") == "Recovered" for e in await harness.events_for("stuck"))

    await harness.eventually(recovered, "a Recovered Event")


async def test_persistent_500_on_one_child_kind_degrades_and_recovers(harness: Harness) -> None:
    # The real API server answered `500 … failed to allocate a serviceIP … range is full` for minutes.
    await _failing_child_is_reported_and_recovers(harness, 500, "services", "Service")


async def test_persistent_422_on_one_child_kind_degrades_and_recovers(harness: Harness) -> None:
    await _failing_child_is_reported_and_recovers(harness, 422, "deployments", "Deployment")


MINIMAL = {"model": {"source": "hf://THUDM/glm-4-9b-chat"}}


async def test_minimal_cr_with_explicit_quantization_deploys_without_a_fit_check(harness: Harness) -> None:
    await harness.start_operator()
    await harness.create_cr("minimal", {**MINIMAL, "quantization": "int8"})
    await harness.eventually(lambda: harness.get("Deployment", "minimal"), "the Deployment")
    cond = await harness.wait_condition("minimal", "MemoryFit", "Unknown", "GpuUnknown")
    assert "spec.resources.gpu.product" in cond["message"]
    assert "spec.resources.gpu.memory" in cond["message"]
    assert (await harness.condition("minimal", "Degraded"))["status"] == "False"
    status = (await harness.get(api.KIND, "minimal"))["status"]
    assert status["quantization"] == "int8"
    assert status["estimatedGpuMemory"].endswith("Gi")
    assert "estimate" not in status  # no budget to compare against


async def test_auto_with_an_unknown_gpu_is_refused_with_the_instruction(harness: Harness) -> None:
    await harness.start_operator()
    await harness.create_cr("guess", MINIMAL)  # quantization defaults to auto
    cond = await harness.wait_condition("guess", "Degraded", "True")
    assert "quantization auto" in cond["message"]
    assert "spec.resources.gpu.product" in cond["message"]
    assert await harness.get("Deployment", "guess") is None


async def test_minimal_cr_plans_against_the_gpu_node_labels(harness: Harness) -> None:
    # GPU feature discovery labels: two node types the pods can land on; the smaller GPU decides.
    for name, product, mib in (("big", "NVIDIA-A100-SXM4-80GB", 81920), ("small", "NVIDIA-L4", 23034)):
        labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(mib)}
        await harness.call(
            harness.kube.create,
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}},
        )
    await harness.start_operator()
    await harness.create_cr("labelled", MINIMAL)
    cond = await harness.wait_condition("labelled", "MemoryFit", "True")
    assert "L4" in cond["message"], cond
    status = (await harness.get(api.KIND, "labelled"))["status"]
    assert status["estimate"]["budgetGib"] < 23, status["estimate"]
    assert await harness.get("Deployment", "labelled") is not None


async def test_inactive_hpa_shows_on_the_cr_once(harness: Harness) -> None:
    await harness.start_operator()
    await scenarios.autoscaler_inactive_shows_on_the_cr(harness)


async def test_keda_scaled_object_instead_of_the_hpa(harness: Harness) -> None:
    await harness.start_operator()
    await scenarios.keda_scaled_object_replaces_the_hpa(harness)


async def test_keda_not_installed_says_so(harness: Harness) -> None:
    del harness.emulator.resources["keda.sh/v1alpha1/scaledobjects"]
    await harness.start_operator()
    await harness.create_cr("keda", scenarios.spec(autoscaling={"engine": "keda"}))
    cond = await harness.wait_condition("keda", "Autoscaling", "False", "KedaNotInstalled")
    assert "engine: hpa" in cond["message"]
    degraded = await harness.wait_condition("keda", "Degraded", "False", "AsExpectedWithWarnings")
    assert "ScaledObject" in degraded["message"]
    assert await harness.get("HorizontalPodAutoscaler", "keda") is None


async def test_watches_select_server_side(harness: Harness) -> None:
    """The API server sends only our children and only GPU nodes: kopf's watches carry the label
    selectors (a client-side filter would have the operator receive, and kopf track, every
    Deployment, ConfigMap and Service of the cluster)."""
    await harness.start_operator()
    await scenarios.create_becomes_ready(harness)
    selectors = harness.emulator.selectors
    for plural in ("deployments", "services", "configmaps", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert selectors.get(plural) == {"app.kubernetes.io/managed-by=autoglm-operator"}, (plural, selectors)
    assert selectors.get("nodes") == {"nvidia.com/gpu.product"}, selectors
    assert selectors.get(api.PLURAL) == {""}
