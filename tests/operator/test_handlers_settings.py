"""Kopf settings the operator relies on: server-side selectors, bounded retry gaps."""

from __future__ import annotations

from typing import Any

import kopf

from autoglm_operator.handlers import CHILD_SELECTOR, configure_settings
from autoglm_operator.kube import KINDS
from autoglm_operator.reconcile import GPU_PRODUCT_LABEL


def test_retry_gaps_stay_short_so_watches_return_soon_after_an_outage() -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings)
    gaps = list(settings.networking.error_backoffs)  # type: ignore[arg-type]
    assert max(gaps) <= 5, "a 21 s gap kept a new CR waiting 44 s after a 45 s API outage"
    assert sum(gaps) >= 45, "but the retries still span a typical API server restart"


def test_child_and_node_watches_select_server_side() -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings, read_nodes=True)
    selectors = list(settings.watching.label_selectors.values())
    assert CHILD_SELECTOR in selectors
    assert GPU_PRODUCT_LABEL in selectors
    settings = kopf.OperatorSettings()
    configure_settings(settings, read_nodes=False)
    assert list(settings.watching.label_selectors.values()) == [CHILD_SELECTOR]


def test_kopf_workers_do_not_keep_bodies_after_their_event() -> None:
    """Kopf's per-object worker keeps its last raw event while it idles (5 s by default): after a
    restart at 1,000 CRs that held every listed body at once (docs/benchmarks.md, issue 19)."""
    settings = kopf.OperatorSettings()
    assert settings.queueing.idle_timeout == 5.0  # kopf's default, the one that cost memory
    configure_settings(settings)
    assert settings.queueing.idle_timeout <= 0.5


def test_kopf_keeps_only_the_crs_metadata_between_events() -> None:
    """Kopf keeps the last body of each object that has a daemon (the resync daemon) until the
    object goes: the operator leaves it the metadata only, and kopf's own reads of it (deletion,
    finalizers) answer as they did on the whole body."""
    from kopf._cogs.structs import finalizers  # kopf's readers of the kept body (private)

    from autoglm_operator.handlers import release_body

    raw = {
        "apiVersion": "autoglm.io/v1alpha1",
        "kind": "AutoGLMDeployment",
        "metadata": {
            "name": "a", "namespace": "ml", "uid": "u1", "generation": 3, "resourceVersion": "42",
            "labels": {"team": "x"}, "finalizers": ["other.io/keep"], "deletionTimestamp": "2026-12-08T00:00:00Z",
            "annotations": {"note": "short", "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 5000},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"model": {"name": "zai-org/AutoGLM-Phone-9B"}, "replicas": 2},
        "status": {"observedGeneration": 3},
    }  # fmt: skip
    whole = kopf.Body(raw)
    body = kopf.Body(dict(raw))
    release_body(body)
    assert set(body) == {"apiVersion", "kind", "metadata"}
    assert "managedFields" not in body["metadata"]
    assert body["metadata"]["annotations"] == {"note": "short"}
    assert (body.metadata.name, body.metadata.uid) == ("a", "u1")
    assert body.metadata.labels == {"team": "x"}
    assert finalizers.is_deletion_ongoing(body=body) is finalizers.is_deletion_ongoing(body=whole) is True
    for finalizer in ("other.io/keep", "autoglm.io/x"):
        blocked = finalizers.is_deletion_blocked(body=body, finalizer=finalizer)
        assert blocked == finalizers.is_deletion_blocked(body=whole, finalizer=finalizer)
    assert raw["spec"], "the event's own dict is not changed"


def test_the_log_keeps_reconciles_and_failures_not_every_handled_event(caplog: Any, monkeypatch: Any) -> None:
    """Kopf logs "Handler 'X' succeeded." for every listed object: at 1,000 CRs a reconnect wrote
    ~6,600 such lines (98% of the log). The operator's logging drops those of its event handlers."""
    import logging

    from autoglm_operator.commands.run import configure_logging
    from autoglm_operator.handlers import WATCHED_CHILDREN

    monkeypatch.setattr(kopf, "configure", lambda **_: None)  # leave the test process's logging alone
    log = logging.getLogger("kopf.objects")
    monkeypatch.setattr(log, "filters", list(log.filters))  # restored afterwards
    configure_logging("text", verbose=False)
    configure_logging("text", verbose=False)  # installs the filter once
    assert len(log.filters) == 1
    with caplog.at_level(logging.INFO, logger="kopf.objects"):
        for handler in (
            "reconcile",
            "gpu-nodes-changed",
            "gpu_nodes",
            *(f"child-{KINDS[k].plural}" for k in WATCHED_CHILDREN),
        ):
            log.info(f"Handler {handler!r} succeeded.")
        log.info("Applied Deployment ml/chat")
        log.error("Handler 'reconcile' failed with an exception and will try again in 60 seconds: boom")
        log.info("Handler 'someone-elses' succeeded.")
    assert [r.getMessage() for r in caplog.records] == [
        "Applied Deployment ml/chat",
        "Handler 'reconcile' failed with an exception and will try again in 60 seconds: boom",
        "Handler 'someone-elses' succeeded.",
    ]
