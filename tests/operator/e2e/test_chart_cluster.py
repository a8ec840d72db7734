"""The chart, its two operator replicas, the minimal CR, the examples and the invalid CRs on a real
API server (opt-in, like ``test_operator_cluster.py``).

``AUTOGLM_TEST_CLUSTER=1 KUBECONFIG=... pytest -m cluster tests/operator/e2e`` with cluster-admin
rights; the chart's CRDs are installed by ``helm install`` here. No scheduler or kubelet is needed:
the operator runs as two local processes with the chart's exact arguments and the token of the
chart's ServiceAccount (so RBAC is the chart's), the way the chart's two pods would.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from autoglm_operator import api
from autoglm_operator.kube import KINDS, Kind, Kube, KubeApiError, load_configuration
from tests.conftest import EXAMPLES, REPO

from .conftest import CLUSTER
from .test_operator_peering import Replica, running

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not CLUSTER, reason="set AUTOGLM_TEST_CLUSTER=1 and KUBECONFIG to run against a cluster"
    ),
]

HELM = shutil.which("helm") or str(REPO / ".venv" / "bin" / "helm")
RELEASE = "autoglm"
SYSTEM_NS = "autoglm-system"
CR = KINDS[api.KIND]
PEERING = Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False)
TAKEOVER_BOUND = 15 + 20  # the chart's peering.lifetimeSeconds + resuming, on a loaded machine


def _wait(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def kube() -> Iterator[Kube]:
    k = Kube(load_configuration(), user_agent="autoglm-e2e")
    yield k
    k.close()


@pytest.fixture(scope="module")
def chart(kube: Kube) -> Iterator[dict[str, Any]]:
    """``helm install`` of the chart with its defaults (CRDs included); the rendered Deployment."""
    subprocess.run([HELM, "uninstall", RELEASE, "-n", SYSTEM_NS], capture_output=True, check=False)
    done = subprocess.run(
        [
            HELM,
            "install",
            RELEASE,
            str(REPO / "charts" / "autoglm-operator"),
            "-n",
            SYSTEM_NS,
            "--create-namespace",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    deployment = kube.get(KINDS["Deployment"], SYSTEM_NS, f"{RELEASE}-autoglm-operator")
    assert deployment is not None
    yield deployment
    subprocess.run([HELM, "uninstall", RELEASE, "-n", SYSTEM_NS], capture_output=True, check=False)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = f"autoglm-e2e-{uuid.uuid4().hex[:6]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.delete(KINDS["Namespace"], None, name)


def _service_account_kubeconfig(deployment: dict[str, Any], directory: Path) -> Path:
    """A kubeconfig with a token of the chart's ServiceAccount (what the pods would get)."""
    info = load_configuration()
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    with k8s_config.new_client_from_config(config_file=os.environ.get("KUBECONFIG")) as api_client:
        token = (
            k8s.CoreV1Api(api_client)
            .create_namespaced_service_account_token(
                sa, SYSTEM_NS, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
            )
            .status.token
        )
    cluster: dict[str, Any] = {"server": info.server}
    if info.ca_path:
        cluster["certificate-authority-data"] = base64.b64encode(Path(info.ca_path).read_bytes()).decode()
    elif info.ca_data:
        cluster["certificate-authority-data"] = info.ca_data
    path = directory / "operator-kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "operator",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "operator", "context": {"cluster": "c", "user": "operator"}}],
            }
        )
    )
    return path


def _chart_args(deployment: dict[str, Any]) -> list[str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = list(container["args"])
    assert args[0] == "run"
    # Ports: two processes on one host; the probes are not what is tested here.
    return [a for a in args[1:] if not a.startswith(("--liveness-port", "--metrics-port"))] + [
        "--liveness-port=0",
        "--metrics-port=0",
        "--log-format=text",
    ]


def _condition(kube: Kube, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    cr = kube.get(CR, namespace, name) or {}
    return next((c for c in (cr.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def _create(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> None:
    kube.create(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_chart_installs_and_two_replicas_elect_one_then_fail_over(
    chart: dict[str, Any], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = _service_account_kubeconfig(chart, tmp_path)
    args = _chart_args(chart)
    assert any(a.startswith("--peering=") for a in args), args
    older = Replica("operator-a", tmp_path, args, peering=False, kubeconfig=kubeconfig)
    replicas = [older]
    time.sleep(3)  # the older replica leads
    younger = Replica("operator-b", tmp_path, args, peering=False, kubeconfig=kubeconfig)
    replicas.append(younger)
    with running(replicas):
        peering_name = next(a.split("=", 1)[1] for a in args if a.startswith("--peering="))

        def members() -> dict[str, Any]:
            return dict((kube.get(PEERING, None, peering_name) or {}).get("status") or {})

        _wait(lambda: {"operator-a", "operator-b"} <= set(members()), "both replicas in the peering")
        spec = {"model": {"source": "hf://THUDM/glm-4-9b-chat"}, "quantization": "int8"}
        started = time.monotonic()
        _create(kube, namespace, "first", spec)
        _wait(lambda: kube.get(KINDS["Deployment"], namespace, "first"), "the first Deployment", 30)
        print(f"first CR reconciled in {time.monotonic() - started:.1f}s with two replicas")
        # Only one replica wrote it: the Deployment's managers name one field manager, and the
        # standby's log shows no apply.
        assert "Applied Deployment" not in younger.log.read_text(), younger.tail()
        cond = _wait(lambda: _condition(kube, namespace, "first", "MemoryFit"), "MemoryFit")
        assert (cond["status"], cond["reason"]) == ("Unknown", "GpuUnknown"), cond

        older.kill()
        killed = time.monotonic()
        _create(kube, namespace, "second", spec)
        _wait(
            lambda: kube.get(KINDS["Deployment"], namespace, "second"),
            f"the standby to take over within {TAKEOVER_BOUND}s",
            TAKEOVER_BOUND,
        )
        print(f"takeover after SIGKILL: {time.monotonic() - killed:.1f}s (chart lifetime 15s)")


def test_every_example_reaches_progressing(chart: dict[str, Any], kube: Kube, tmp_path: Path) -> None:
    ns = "ml"
    if kube.get(KINDS["Namespace"], None, ns) is None:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kubeconfig = _service_account_kubeconfig(chart, tmp_path)
    replica = Replica("operator-examples", tmp_path, _chart_args(chart), peering=False, kubeconfig=kubeconfig)
    names = []
    try:
        for path in EXAMPLES:
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                kind = KINDS.get(doc["kind"]) or Kind("v1", doc["kind"], doc["kind"].lower() + "s")
                meta = doc["metadata"]
                if kube.get(kind, meta.get("namespace"), meta["name"]) is not None:
                    kube.delete(kind, meta.get("namespace"), meta["name"])
                    _wait(
                        lambda k=kind, m=meta: kube.get(k, m.get("namespace"), m["name"]) is None, "deletion"
                    )
                kube.create(doc)
                if doc["kind"] == api.KIND:
                    names.append((path.name, meta["namespace"], meta["name"]))
        for file, namespace, name in names:
            cond = _wait(
                lambda n=namespace, m=name: (
                    (c := _condition(kube, n, m, "Progressing")) and c["status"] == "True" and c
                ),
                f"Progressing=True on {file}",
                90,
            )
            assert kube.get(KINDS["Deployment"], namespace, name) is not None, (file, cond)
        # No metrics API on this server: every autoscaled example says its autoscaler cannot scale,
        # naming the fix, within a minute (the real HPA controller reports it by itself).
        for file, namespace, name in names:
            cr = kube.get(CR, namespace, name)
            if not (cr and (cr["spec"].get("autoscaling") or {}).get("enabled", True) and cr["spec"].get("autoscaling")):
                continue
            cond = _wait(
                lambda n=namespace, m=name: (
                    (c := _condition(kube, n, m, "Autoscaling")) and c["status"] == "False" and c
                ),
                f"Autoscaling=False on {file}",
                60,
            )
            assert "metrics" in cond["message"], (file, cond)
            print(f"{file}: Autoscaling=False {cond['reason']}")
    except BaseException:
        print(replica.tail())
        raise
    finally:
        replica.stop()
        for _, namespace, name in names:
            kube.delete(CR, namespace, name)


def _bad_crs() -> list[tuple[dict[str, Any], str, str]]:
    from tests.operator.test_validate import BAD

    return BAD


@pytest.mark.parametrize("index", range(len(_bad_crs())))
def test_invalid_crs_are_refused_naming_the_field(
    chart: dict[str, Any], kube: Kube, namespace: str, index: int
) -> None:
    obj, path, _ = copy.deepcopy(_bad_crs()[index])
    obj.setdefault("metadata", {})["namespace"] = namespace
    version = obj.get("apiVersion", api.API_VERSION)
    kind = Kind(version, api.KIND, api.PLURAL)
    with pytest.raises(KubeApiError) as refused:
        kube._call(
            "POST",
            kind.path(namespace),
            body=obj,
            query=[("fieldValidation", "Strict")],
            what=f"bad CR {index}",
        )
    error = refused.value
    assert error.status in (400, 404, 422), error
    if path:
        # The API server names the field: `spec.autoscaling.minReplicas: Invalid value` etc.
        assert path.removeprefix("spec.").split(".")[-1] in error.message, (path, error.message)
    print(f"refused {index} ({path or 'root'}): {error.status} {error.message[:160]}")


def test_the_crd_on_the_server_is_the_committed_one(chart: dict[str, Any], kube: Kube) -> None:
    crd = kube._call(
        "GET",
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{api.PLURAL}.{api.GROUP}",
        what="the CRD",
    )
    committed = yaml.safe_load((REPO / "crds" / "autoglm.io_autoglmdeployments.yaml").read_text())
    served = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # Dict equality: the server writes the float default 0.0 back as 0, which compares equal.
    assert served == committed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
