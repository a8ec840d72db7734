"""reconcile() against an in-memory fake of the operator's API client (no HTTP, no kopf loop) and a
:class:`Cache` standing for what the operator's watches delivered."""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
import pytest

from autoglm_operator.cache import Cache, Change
from autoglm_operator.kube import Kind, KubeApiError
from autoglm_operator.reconcile import HASH_ANNOTATION, RetryLater, applied_hash, backoff, reconcile

LOG = logging.getLogger("test")
CR: dict[str, Any] = {
    "apiVersion": "autoglm.io/v1alpha1",
    "kind": "AutoGLMDeployment",
    "metadata": {"name": "chat", "namespace": "ml", "uid": "u1", "generation": 1},
    "spec": {
        "model": {"source": "hf://THUDM/glm-4-9b-chat"},
        "quantization": "int8",
        "resources": {"gpu": {"count": 1, "product": "L4"}},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
    },
}


class FakeKube:
    """Objects by (kind, name); records writes; can fail a given verb+kind."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], KubeApiError] = {}
        self.last_patch: dict[str, Any] = {}
        self.reads: list[tuple[str, str]] = []
        self._version = 100

    def _maybe_fail(self, verb: str, kind: str) -> None:
        if (verb, kind) in self.fail:
            raise self.fail[(verb, kind)]

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.reads.append(("get", kind.kind))
        return copy.deepcopy(self.objects.get((kind.kind, name)))

    def list(
        self, kind: Kind, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        self.reads.append(("list", kind.kind))
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind.kind]

    def apply(self, obj: dict[str, Any], *, field_manager: str = "", force: bool = True) -> dict[str, Any]:
        self._maybe_fail("apply", obj["kind"])
        self.writes.append(("apply", obj["kind"]))
        stored = copy.deepcopy(obj)
        self._version += 1
        stored["metadata"].setdefault("uid", f"uid-{obj['kind']}-{obj['metadata']['name']}")
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def delete(self, kind: Kind, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        self.writes.append(("delete", kind.kind))
        return self.objects.pop((kind.kind, name), None) is not None

    def patch(
        self, kind: Kind, namespace: str | None, name: str, patch: dict, *, subresource: str | None = None
    ):
        self._maybe_fail("patch", kind.kind)
        self.writes.append(("patch_status", kind.kind))
        self.last_patch = copy.deepcopy(patch)
        return {}


def _with_status(cr: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(cr)
    if status is not None:
        out["status"] = status
    return out


def test_second_reconcile_writes_nothing() -> None:
    kube, cache = FakeKube(), Cache()
    first = reconcile(CR, kube, LOG, cache=cache)  # type: ignore[arg-type]
    assert first.result == "applied"
    assert sorted(kube.writes) == sorted(
        [
            ("apply", "ConfigMap"),
            ("apply", "Service"),
            ("apply", "Deployment"),
            ("apply", "HorizontalPodAutoscaler"),
            ("apply", "PodDisruptionBudget"),
            ("patch_status", "AutoGLMDeployment"),
        ]
    )
    kube.writes.clear()
    second = reconcile(_with_status(CR, first.status), kube, LOG, cache=cache)  # type: ignore[arg-type]
    assert second.result == "unchanged"
    assert kube.writes == []
    assert kube.reads == [], "everything came from the cache"


def test_a_child_from_the_listing_is_read_once_then_trusted() -> None:
    """After a restart the cache's records come from the watch's listing: each child is compared in
    full once (one GET), then a reconcile reads nothing."""
    kube, cache = FakeKube(), Cache()
    first = reconcile(CR, kube, LOG, cache=cache)  # type: ignore[arg-type]
    restarted = Cache()
    for obj in kube.objects.values():
        restarted.observe_child(obj, None)
    kube.writes.clear()
    again = _with_status(CR, first.status)
    assert reconcile(again, kube, LOG, cache=restarted).result == "unchanged"  # type: ignore[arg-type]
    assert sorted(kube.reads) == sorted(("get", k) for k, _ in kube.objects)
    assert kube.writes == []
    kube.reads.clear()
    reconcile(again, kube, LOG, cache=restarted)  # type: ignore[arg-type]
    assert kube.reads == []


def test_drift_reported_by_the_watch_is_reapplied() -> None:
    kube, cache = FakeKube(), Cache()
    first = reconcile(CR, kube, LOG, cache=cache)  # type: ignore[arg-type]
    edited = copy.deepcopy(kube.objects[("Service", "chat")])
    edited["spec"]["ports"][0]["port"] = 9999  # kubectl edit: the applied-hash annotation stays
    edited["metadata"]["resourceVersion"] = "999"
    kube.objects[("Service", "chat")] = edited
    assert cache.observe_child(edited, "MODIFIED") is Change.DRIFT
    kube.writes.clear()
    reconcile(_with_status(CR, first.status), kube, LOG, cache=cache)  # type: ignore[arg-type]
    assert kube.writes == [("apply", "Service")]
    assert kube.reads == []
    # A status-only change of a child is not drift.
    dep = copy.deepcopy(kube.objects[("Deployment", "chat")])
    dep["status"] = {"readyReplicas": 1}
    dep["metadata"]["resourceVersion"] = "1000"
    assert cache.observe_child(dep, "MODIFIED") is Change.STATUS


def test_unwanted_children_are_pruned_only_when_owned() -> None:
    kube, cache = FakeKube(), Cache()
    first = reconcile(CR, kube, LOG, cache=cache)  # type: ignore[arg-type]
    stranger = copy.deepcopy(kube.objects[("HorizontalPodAutoscaler", "chat")])
    stranger["metadata"]["name"] = "someone-elses"
    stranger["metadata"]["uid"] = "stranger"
    stranger["metadata"]["ownerReferences"] = [
        {"apiVersion": "autoglm.io/v1alpha1", "kind": "AutoGLMDeployment", "name": "x", "uid": "other"}
    ]
    kube.objects[("HorizontalPodAutoscaler", "someone-elses")] = stranger
    cache.observe_child(stranger, "ADDED")
    no_hpa = copy.deepcopy(CR)
    no_hpa["spec"].pop("autoscaling")
    no_hpa["metadata"]["generation"] = 2
    kube.writes.clear()
    reconcile(_with_status(no_hpa, first.status), kube, LOG, cache=cache)  # type: ignore[arg-type]
    assert ("delete", "HorizontalPodAutoscaler") in kube.writes
    assert kube.reads == [], "pruning asks the cache's owner index, not the API server"
    assert ("HorizontalPodAutoscaler", "chat") not in kube.objects
    assert ("HorizontalPodAutoscaler", "someone-elses") in kube.objects


@pytest.mark.parametrize("code", [0, 409, 429, 500, 503])
def test_transient_errors_retry_with_backoff(code: int) -> None:
    kube = FakeKube()
    kube.fail[("apply", "Deployment")] = KubeApiError(
        code, "Boom", "try later", verb="patch", what="Deployment ml/chat"
    )
    with pytest.raises(kopf.TemporaryError) as info:
        reconcile(CR, kube, LOG, retry=0)  # type: ignore[arg-type]
    assert info.value.delay == backoff(0) == 1.0
    assert ("patch_status", "AutoGLMDeployment") not in kube.writes, "the first failure is retried quietly"
    # It keeps failing: the CR says so (Degraded, the object and the API message) and retries go on.
    with pytest.raises(RetryLater) as info:
        reconcile(CR, kube, LOG, retry=3)  # type: ignore[arg-type]
    assert info.value.delay == backoff(3) == 8.0
    assert ("patch_status", "AutoGLMDeployment") in kube.writes
    degraded = next(c for c in kube.last_patch["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "ApplyFailed"
    assert "Deployment ml/chat" in degraded["message"]
    assert "try later" in degraded["message"]
    assert [n.reason for n in info.value.notices] == ["ApplyFailed"]


def test_permanent_api_error_degrades_without_retry() -> None:
    kube = FakeKube()
    kube.fail[("apply", "Deployment")] = KubeApiError(
        422, "Invalid", "spec.template: bad", verb="patch", what="x"
    )
    outcome = reconcile(CR, kube, LOG)  # type: ignore[arg-type]
    assert outcome.result == "failed"
    degraded = next(c for c in outcome.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert "422" in degraded["message"]
    assert [n.reason for n in outcome.notices] == ["ApplyFailed"]


def test_invalid_spec_touches_no_child() -> None:
    kube = FakeKube()
    bad = copy.deepcopy(CR)
    bad["spec"]["model"]["source"] = "ftp://x/y"
    outcome = reconcile(bad, kube, LOG)  # type: ignore[arg-type]
    assert outcome.result == "invalid"
    assert kube.writes == [("patch_status", "AutoGLMDeployment")]
    assert "spec.model.source" in outcome.status["conditions"][0]["message"]


def test_applied_hash_ignores_its_own_annotation_and_key_order() -> None:
    obj = {"kind": "Service", "metadata": {"name": "a", "annotations": {"x": "1"}}, "spec": {"b": 1, "a": 2}}
    same = {
        "spec": {"a": 2, "b": 1},
        "metadata": {"annotations": {"x": "1", HASH_ANNOTATION: "old"}, "name": "a"},
    }
    same["kind"] = "Service"
    assert applied_hash(obj) == applied_hash(same)
    assert applied_hash(obj) != applied_hash({**obj, "spec": {"a": 3}})


def test_cel_rules_run_once_per_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CRD's CEL rules (the costly part of parsing a spec) run for a new generation only; a
    resync or a child's status change reuses the verdict, and a spec that breaks a rule stays
    invalid on every reconcile of its generation."""
    from autoglm_operator import cel

    calls: list[int] = []
    real = cel.evaluate_rules
    monkeypatch.setattr(cel, "evaluate_rules", lambda rules, obj: calls.append(1) or real(rules, obj))
    kube, cache = FakeKube(), Cache()
    first = reconcile(CR, kube, LOG, cache=cache)  # type: ignore[arg-type]
    assert calls
    calls.clear()
    assert reconcile(_with_status(CR, first.status), kube, LOG, cache=cache).result == "unchanged"  # type: ignore[arg-type]
    assert calls == []
    bad = copy.deepcopy(CR)
    bad["metadata"]["generation"] = 2
    bad["spec"]["model"]["cache"] = {"claimName": "weights", "size": "40Gi"}
    for _ in range(2):
        outcome = reconcile(bad, kube, LOG, cache=cache)  # type: ignore[arg-type]
        assert outcome.result == "invalid"
        assert "set exactly one of claimName" in outcome.status["conditions"][0]["message"]
    assert calls


def test_managed_counts_are_thread_safe_and_fold_into_the_gauge() -> None:
    """Reconciles in several threads report their children at once (on a real server this raised
    'dictionary changed size during iteration' in a reconcile)."""
    import threading

    from autoglm_operator import metrics

    counts = metrics.ManagedCounts()

    def many(i: int) -> None:
        for j in range(300):
            counts.set(("ns", f"cr-{i}-{j}"), ["Deployment", "Service", "Service"])

    threads = [threading.Thread(target=many, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts.totals() == {"Deployment": 1800, "Service": 3600}
    counts.set(("ns", "cr-0-0"), ["Deployment"])
    counts.forget(("ns", "cr-0-1"))
    assert counts.totals() == {"Deployment": 1799, "Service": 3596}
    assert metrics.MANAGED.labels(kind="Service")._value.get() == 3596
