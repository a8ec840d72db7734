"""The operator's cache: what a watch event means, kept small."""

from __future__ import annotations

import copy
from typing import Any

from autoglm_operator.cache import Cache, Change, fingerprint, newer

OWNER = {"apiVersion": "autoglm.io/v1alpha1", "kind": "AutoGLMDeployment", "name": "chat", "uid": "u1"}


def deployment(rv: str = "10", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "chat", "namespace": "ml", "uid": "d1", "resourceVersion": rv, "generation": 1,
            "labels": {"app.kubernetes.io/managed-by": "autoglm-operator"},
            "annotations": {"autoglm.io/applied-hash": "h1"},
            "ownerReferences": [OWNER],
            "managedFields": [{"manager": "autoglm-operator"}],
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "runtime", "image": "x"}]}}},
        "status": dict(status),
    }


def test_fingerprint_ignores_status_server_metadata_and_replicas() -> None:
    a = deployment()
    b = deployment(rv="11", readyReplicas=2)
    b["metadata"]["managedFields"] = []
    b["metadata"]["generation"] = 5
    b["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    b["spec"]["replicas"] = 4  # the HPA's
    assert fingerprint(a) == fingerprint(b)
    edited = copy.deepcopy(a)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "y"
    assert fingerprint(edited) != fingerprint(a)
    relabelled = copy.deepcopy(a)
    relabelled["metadata"]["labels"]["extra"] = "1"
    assert fingerprint(relabelled) != fingerprint(a)


def test_resource_versions_compare_as_numbers() -> None:
    assert newer("100", "99")
    assert not newer("99", "100")
    assert not newer("100", "100")
    assert newer("1", None)


def test_child_events_classified() -> None:
    cache = Cache()
    applied = cache.record_applied(deployment())
    assert applied.trusted == applied.fingerprint
    assert cache.observe_child(deployment(), "ADDED") is Change.NONE, "the echo of our own apply"
    assert cache.observe_child(deployment(rv="11", readyReplicas=1), "MODIFIED") is Change.STATUS
    assert cache.observe_child(deployment(rv="9", readyReplicas=0), "MODIFIED") is Change.NONE, "older"
    edited = deployment(rv="12", readyReplicas=1)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil"
    assert cache.observe_child(edited, "MODIFIED") is Change.DRIFT
    record = cache.child("Deployment", "ml", "chat")
    assert record is not None
    assert record.drifted
    assert [r.name for r in cache.owned("u1")] == ["chat"]
    assert cache.observe_child(edited, "DELETED") is Change.GONE
    assert cache.owned("u1") == []


def test_records_are_small_and_keep_no_body() -> None:
    cache = Cache()
    cache.record_applied(deployment())
    record = cache.child("Deployment", "ml", "chat")
    assert record is not None
    assert "managedFields" not in str(record)
    assert "template" not in str(record), "the record keeps a fingerprint, not the pod template"


def test_cr_echo_of_our_status_patch_is_no_news() -> None:
    cache = Cache()
    body = {"metadata": {"name": "chat", "namespace": "ml", "uid": "u1", "resourceVersion": "5",
                         "managedFields": [{"x": 1}], "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"a": 1}}  # fmt: skip
    assert cache.observe_cr(body)
    written = copy.deepcopy(body)
    written["metadata"]["resourceVersion"] = "6"
    written["status"] = {"observedGeneration": 1}
    cache.record_cr(written)
    assert not cache.observe_cr(written), "the watch's echo of the operator's own write"
    assert not cache.observe_cr(body), "an older event"
    held = cache.cr("ml", "chat")
    assert held is not None
    assert "managedFields" not in held["metadata"]
    assert "annotations" not in held["metadata"]
    assert held["status"] == {"observedGeneration": 1}
