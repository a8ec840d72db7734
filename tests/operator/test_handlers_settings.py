"""Kopf settings the operator relies on: server-side selectors, bounded retry gaps."""

from __future__ import annotations

import kopf

from autoglm_operator.handlers import CHILD_SELECTOR, configure_settings
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
