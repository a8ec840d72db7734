"""The same scenarios against a real cluster (kind, k3d, any) named by ``KUBECONFIG``.

Opt-in: ``AUTOGLM_TEST_CLUSTER=1 pytest -m cluster tests/operator/e2e``. Needs the CRD installed
(``kubectl apply -f crds/``) and rights to create namespaces; each test uses a fresh namespace and
runs the operator in-process (``autoglm-operator run --namespace <it>``). No GPU is needed: the
scenarios check objects and status, not running pods (so Ready is not awaited here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from autoglm_operator import api
from autoglm_operator.kube import KINDS, KubeApiError

from . import scenarios
from .conftest import CLUSTER
from .harness import Harness, cluster_namespace

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not CLUSTER, reason="set AUTOGLM_TEST_CLUSTER=1 and KUBECONFIG to run against a cluster"
    ),
]


@pytest.fixture
async def cluster() -> AsyncIterator[Harness]:
    async with cluster_namespace((api.KIND,), "autoglm-e2e") as h:
        yield h


async def test_create(cluster: Harness) -> None:
    await cluster.start_operator()
    await scenarios.create_becomes_ready(cluster)


async def test_update_and_prune(cluster: Harness) -> None:
    await cluster.start_operator()
    await scenarios.create_becomes_ready(cluster)
    await scenarios.update_rolls_pods(cluster)


async def test_resync_keeps_resource_versions(cluster: Harness) -> None:
    await cluster.start_operator(resync_seconds=1)
    await scenarios.create_becomes_ready(cluster)
    await cluster.settle(2)
    before = {k: o["metadata"]["resourceVersion"] for k, o in (await cluster.children("chat")).items()}
    await cluster.settle(3)
    after = {k: o["metadata"]["resourceVersion"] for k, o in (await cluster.children("chat")).items()}
    # Only the Deployment and the HPA may move: their real controllers update their status.
    for kind in ("Deployment", "HorizontalPodAutoscaler"):
        before.pop(kind)
        after.pop(kind)
    assert after == before


async def test_invalid_name(cluster: Harness) -> None:
    # The API server accepts this name (DNS-1123 subdomain), the operator cannot name a Service after it.
    await cluster.start_operator()
    await scenarios.invalid_spec_degrades(cluster, "9chat", scenarios.SPEC, "metadata.name")


async def test_drift_and_deletion(cluster: Harness) -> None:
    await cluster.start_operator()
    await scenarios.create_becomes_ready(cluster)
    await scenarios.deleted_child_is_recreated(cluster)
    await scenarios.delete_cr_collects_children(cluster)


async def test_memory_does_not_fit(cluster: Harness) -> None:
    await cluster.start_operator()
    await scenarios.memory_does_not_fit(cluster)


async def test_inactive_autoscaler_shows_within_a_minute(cluster: Harness) -> None:
    """The real HPA controller, with no custom metrics API installed, sets ScalingActive=False."""
    await cluster.start_operator()
    await scenarios.autoscaler_inactive_shows_on_the_cr(cluster)


async def test_keda_scaled_object_is_admitted(cluster: Harness) -> None:
    """Needs KEDA's CRD (../shared/crds/keda.sh_scaledobjects.yaml) installed, not KEDA itself."""
    try:
        cluster.kube.list(KINDS["ScaledObject"], cluster.namespace)
    except KubeApiError as e:
        pytest.skip(f"KEDA's ScaledObject CRD is not installed: {e}")
    await cluster.start_operator()
    await scenarios.keda_scaled_object_replaces_the_hpa(cluster)
