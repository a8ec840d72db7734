"""spec.routing against a real API server: the InferencePool, the endpoint picker and its RBAC,
the HTTPRoute are admitted with the released CRDs installed, the pool selects the runtime pods,
and deleting the CR garbage-collects them all.

Opt-in like the other cluster tests: ``AUTOGLM_TEST_CLUSTER=1 pytest -m cluster tests/operator/e2e``,
with our CRD and the released ones installed
(``kubectl apply --server-side -f crds/ -f ../shared/crds/``). The operator runs in-process with
the test's credentials (cluster-admin); the chart's own RBAC for these kinds is checked offline in
``tests/delivery/test_chart.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from autoglm_operator import api, labels
from autoglm_operator.kube import KINDS

from . import scenarios
from .conftest import CLUSTER
from .harness import Harness, cluster_namespace

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not CLUSTER, reason="set AUTOGLM_TEST_CLUSTER=1 and KUBECONFIG to run against a cluster"
    ),
]

NAME = "routed"
PICKER = labels.picker_name(NAME)
ROUTING_KINDS = {
    ("InferencePool", NAME),
    ("HTTPRoute", NAME),
    ("ServiceAccount", PICKER),
    ("Role", PICKER),
    ("RoleBinding", PICKER),
    ("ConfigMap", PICKER),
    ("Service", PICKER),
    ("Deployment", PICKER),
}
ROUTE = {"parentRefs": [{"name": "inference-gateway"}], "hostnames": ["routed.example.com"]}
GC_TIMEOUT = 120.0  # the garbage collector may take ~40 s for kinds of a just-installed CRD


@pytest.fixture
async def cluster() -> AsyncIterator[Harness]:
    async with cluster_namespace((api.KIND, "InferencePool", "HTTPRoute"), "autoglm-routing") as h:
        yield h


async def routing_children(h: Harness) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for kind in sorted({k for k, _ in ROUTING_KINDS}):
        for obj in await h.call(
            h.kube.list, KINDS[kind], h.namespace, label_selector=f"app.kubernetes.io/instance={NAME}"
        ):
            found[(kind, obj["metadata"]["name"])] = obj
    return found


async def test_routing_objects_are_admitted_select_the_pods_and_go_with_the_cr(cluster: Harness) -> None:
    await cluster.start_operator()
    cr = await cluster.create_cr(
        NAME, scenarios.spec(routing={"inferencePool": {"enabled": True}, "httpRoute": ROUTE})
    )
    uid = cr["metadata"]["uid"]

    async def all_there() -> dict[tuple[str, str], dict[str, Any]] | None:
        found = await routing_children(cluster)
        return found if set(found) >= ROUTING_KINDS else None

    kids = await cluster.eventually(all_there, "every routing object", timeout=60)
    for key, obj in kids.items():
        refs = obj["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [(api.KIND, uid, True)], key

    runtime = await cluster.get("Deployment", NAME)
    assert runtime is not None
    pool = kids[("InferencePool", NAME)]["spec"]
    pod_labels = runtime["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in pool["selector"]["matchLabels"].items())
    picker_pods = kids[("Deployment", PICKER)]["spec"]["template"]["metadata"]["labels"]
    assert not all(picker_pods.get(k) == v for k, v in pool["selector"]["matchLabels"].items())
    assert pool["endpointPickerRef"]["name"] == PICKER
    assert kids[("HTTPRoute", NAME)]["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"

    async def endpoint() -> str | None:
        got = await cluster.get(api.KIND, NAME)
        return ((got or {}).get("status") or {}).get("endpoint")

    assert await cluster.eventually(endpoint, "status.endpoint") == "http://routed.example.com/v1"

    assert await cluster.delete(api.KIND, NAME)

    async def collected() -> bool:
        return await routing_children(cluster) == {}

    await cluster.eventually(collected, "the routing objects to be garbage-collected", timeout=GC_TIMEOUT)
