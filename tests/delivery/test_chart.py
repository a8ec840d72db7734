"""The Helm chart, checked with the real helm binary: lint, render in every mode, validate every object
against the Kubernetes schemas, least-privilege RBAC, restricted pods, the strict values schema, and
the copies of generated files (CRD, dashboard, alert rules) it carries."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from autoglm_operator import api
from autoglm_operator.crd import crd, crd_yaml
from autoglm_operator.kube import KINDS
from autoglm_operator.reconcile import PRUNABLE
from tests.conftest import REPO
from tests.delivery.conftest import CHART, KUBE_VERSION, NAMESPACE, VALUE_SETS, by_kind, one, run_helm

# Kinds whose schema kubernetes-validate does not ship: prometheus-operator's (no CRD here to check
# against; their shape is asserted field by field below) and kopf's peerings (checked against the
# CRD the chart installs).
CUSTOM_GROUPS = ("monitoring.coreos.com/", "kopf.dev/")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm: str, tmp_path: Path, name: str) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), values=VALUE_SETS[name], tmp=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_valid_kubernetes(render, name: str) -> None:
    objects = render(VALUE_SETS[name], include_crds=True)
    checked: set[str] = set()
    for obj in objects:
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION.rsplit(".", 1)[0], strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {e.json_path}")
        checked.add(obj["kind"])
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    } <= checked


def test_peering_objects_match_the_kopf_crds(render) -> None:
    crds = {
        c["spec"]["names"]["kind"]: c
        for c in by_kind(render({}, include_crds=True), "CustomResourceDefinition")
    }
    for values in VALUE_SETS.values():
        for obj in render(values):
            if obj["apiVersion"] == "kopf.dev/v1":
                schema = crds[obj["kind"]]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                jsonschema.validate(obj, schema)
                assert (crds[obj["kind"]]["spec"]["scope"] == "Namespaced") == (
                    "namespace" in obj["metadata"]
                )


def test_every_object_is_labelled_and_namespaced(render) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "CustomResourceDefinition"}
    for values in VALUE_SETS.values():
        for obj in render(values):
            meta = obj["metadata"]
            assert meta["labels"]["app.kubernetes.io/name"] == "autoglm-operator", meta["name"]
            assert meta["labels"]["app.kubernetes.io/instance"] == "agd"
            assert ("namespace" in meta) == (obj["kind"] not in cluster_scoped), (obj["kind"], meta["name"])


def test_crds_install_by_default_and_can_be_skipped(helm: str, render, tmp_path: Path) -> None:
    names = {
        c["metadata"]["name"] for c in by_kind(render({}, include_crds=True), "CustomResourceDefinition")
    }
    assert names == {"autoglmdeployments.autoglm.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    # CRDs come only from crds/ (never from templates), so `helm install --skip-crds` leaves them to
    # whoever manages them (GitOps, `kubectl apply --server-side -f crds/`).
    done = run_helm(helm, "template", "agd", str(CHART), "--skip-crds", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "kind: CustomResourceDefinition" not in done.stdout
    assert not by_kind(render({}), "CustomResourceDefinition")
    assert not by_kind(render(VALUE_SETS["monitoring"]), "CustomResourceDefinition")


def test_chart_crd_is_the_generated_one() -> None:
    """The chart carries a copy (helm cannot read outside the chart); `make crds` refreshes it."""
    copy = CHART / "crds" / "autoglm.io_autoglmdeployments.yaml"
    assert copy.read_text() == crd_yaml(), "charts/autoglm-operator/crds/ is stale: run `make crds`"
    assert yaml.safe_load(copy.read_text()) == crd()
    assert copy.read_text() == (REPO / "crds" / copy.name).read_text()


@pytest.mark.parametrize(
    ("copy", "source"),
    [
        ("files/autoglm-dashboard.json", "deploy/grafana/autoglm-dashboard.json"),
        ("files/autoglm-rules.yaml", "deploy/prometheus/autoglm-rules.yaml"),
    ],
)
def test_chart_files_are_copies_of_deploy(copy: str, source: str) -> None:
    assert (CHART / copy).read_text() == (REPO / source).read_text(), (
        f"{copy} is stale: run `make chart-sync`"
    )


# --- RBAC -------------------------------------------------------------------------------------


def rules_of(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}", rule)
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
        for rule in o["rules"]
    ]


def grants(objects: list[dict[str, Any]], group: str, resource: str, kinds: tuple[str, ...]) -> set[str]:
    verbs: set[str] = set()
    for o in objects:
        if o["kind"] in kinds:
            for rule in o["rules"]:
                if group in rule["apiGroups"] and resource in rule["resources"]:
                    verbs.update(rule["verbs"])
    return verbs


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rbac_has_no_wildcards_and_no_secrets(render, name: str) -> None:
    rules = rules_of(render(VALUE_SETS[name]))
    assert rules
    for where, rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{where}: wildcard in {field}"
        assert not {"secrets", "pods/exec", "serviceaccounts/token"} & set(rule["resources"]), where
        assert not {"escalate", "bind", "impersonate", "update", "deletecollection"} & set(rule["verbs"]), (
            where
        )
        assert "nonResourceURLs" not in rule, where


def test_rbac_cluster_wide_covers_every_kind_the_operator_writes(render) -> None:
    """Tied to the operator's code: a kind added to what it prunes or creates needs a rule here."""
    objects = render({})
    for kind_name in (*PRUNABLE, "PersistentVolumeClaim"):
        kind = KINDS[kind_name]
        expected = {"get", "list", "watch", "create", "patch"} | (
            {"delete"} if kind_name in PRUNABLE else set()
        )
        assert grants(objects, kind.group, kind.plural, ("ClusterRole",)) == expected, kind_name
    assert grants(objects, api.GROUP, api.PLURAL, ("ClusterRole",)) == {"get", "list", "watch", "patch"}
    assert grants(objects, api.GROUP, f"{api.PLURAL}/status", ("ClusterRole",)) == {"get", "patch"}
    assert grants(objects, "", "nodes", ("ClusterRole",)) == {"get", "list", "watch"}
    assert grants(objects, "kopf.dev", "clusterkopfpeerings", ("ClusterRole",)) == {
        "get",
        "list",
        "watch",
        "patch",
    }
    assert grants(objects, "events.k8s.io", "events", ("ClusterRole",)) == {"create", "patch"}
    assert grants(objects, "", "events", ("ClusterRole",)) == {"create", "patch"}
    assert not by_kind(objects, "Role")


def test_rbac_namespaced_mode_grants_workloads_only_in_the_watched_namespaces(render) -> None:
    objects = render(VALUE_SETS["namespaced"])
    cluster_role = one(objects, "ClusterRole")
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "nodes", "namespaces"}
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objects, "RoleBinding")}
    assert set(roles) == set(bindings) == {"ml", "serving"}
    for ns, role in roles.items():
        assert grants([role], "apps", "deployments", ("Role",)) == {
            "get",
            "list",
            "watch",
            "create",
            "patch",
            "delete",
        }
        assert grants([role], "kopf.dev", "kopfpeerings", ("Role",)) == {"get", "list", "watch", "patch"}
        assert bindings[ns]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert bindings[ns]["subjects"][0]["namespace"] == NAMESPACE
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "serving"]
    assert not by_kind(objects, "ClusterKopfPeering")
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml" in args
    assert "--namespace=serving" in args


def test_node_lookup_off_removes_node_access_and_tells_the_operator(render) -> None:
    objects = render(VALUE_SETS["standalone-minimal"])
    assert grants(objects, "", "nodes", ("ClusterRole",)) == set()
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-node-lookup" in args
    assert "--standalone" in args
    assert not [a for a in args if a.startswith("--peering")]
    assert not by_kind(objects, "ClusterKopfPeering")


def test_service_account_binds_to_the_deployment(render) -> None:
    objects = render({})
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa
    assert pod["automountServiceAccountToken"] is True
    assert one(objects, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}
    ]


# --- the operator pod ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_operator_pod_is_restricted(render, name: str) -> None:
    pod = one(render(VALUE_SETS[name]), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 10001
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--liveness-port={ports['liveness']}" in container["args"]
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    assert container["args"][0] == "run"


def test_default_is_two_peered_replicas_with_a_pdb_and_spread(render) -> None:
    objects = render({})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=agd-autoglm-operator" in args
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "agd-autoglm-operator"
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert (
        anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"]
        == "kubernetes.io/hostname"
    )
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/autoglm/autoglm-operator:0.1.0"  # appVersion


def test_image_digest_wins_over_tag(render) -> None:
    image = one(render(VALUE_SETS["standalone-minimal"]), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == "ghcr.io/autoglm/autoglm-operator@sha256:" + "a" * 64


def test_metrics_service_targets_the_metrics_port(render) -> None:
    objects = render({})
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not by_kind(objects, "ServiceMonitor")
    assert not by_kind(objects, "PrometheusRule")
    assert not by_kind(objects, "ConfigMap")


def test_monitoring_objects(render) -> None:
    objects = render(VALUE_SETS["monitoring"])
    monitor = one(objects, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= one(objects, "Service")["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    rule = one(objects, "PrometheusRule")
    # Prometheus' own {{ $labels.x }} templates survive helm untouched.
    assert rule["spec"] == yaml.safe_load((REPO / "deploy/prometheus/autoglm-rules.yaml").read_text())["spec"]
    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["autoglm-dashboard.json"]) == json.loads(
        (REPO / "deploy/grafana/autoglm-dashboard.json").read_text()
    )


# --- values.schema.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "replicas"),  # unknown top-level key (the real one is replicaCount)
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),  # misspelt nested key
        ({"replicaCount": "two"}, "replicaCount"),
        ({"operator": {"logFormat": "xml"}}, "logFormat"),
        ({"operator": {"metricsPort": 70000}}, "metricsPort"),
        ({"watchNamespaces": ["ml-*"]}, "watchNamespaces"),  # globs need cluster-wide RBAC
        ({"image": {"digest": "latest"}}, "digest"),
        ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ],
)
def test_schema_rejects_bad_values(helm: str, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    done = run_helm(helm, "template", "agd", str(CHART), values=values, tmp=tmp_path)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr


def test_several_replicas_without_peering_fail_with_a_reason(helm: str, tmp_path: Path) -> None:
    done = run_helm(helm, "template", "agd", str(CHART), values={"peering": {"enabled": False}}, tmp=tmp_path)
    assert done.returncode != 0
    assert "replicaCount > 1 needs peering.enabled=true" in done.stderr


def test_values_yaml_documents_every_key_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()

    def keys(node: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in node.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and v and k not in ("requests", "limits", "labels"):
                out += keys(v, path + ".")
            else:
                out.append(path)
        return out

    for key in keys(yaml.safe_load((CHART / "values.yaml").read_text())):
        assert f"`{key}`" in readme, f"{key} is missing from the chart README's values table"


# --- security scan ------------------------------------------------------------------------------


def checkov_binary() -> str | None:
    local = REPO / "build" / "checkov-venv" / "bin" / "checkov"
    return str(local) if local.exists() else shutil.which("checkov")


@pytest.mark.skipif(
    checkov_binary() is None, reason="checkov not installed: `make chart-lint` installs it into build/"
)
def test_checkov_finds_nothing_in_the_rendered_chart() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "checkov.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


# Pod features the rendered model pods use, and the first Kubernetes minor with them on by default.
FEATURE_MINORS = {"lifecycle.preStop.sleep": (1, 30)}


def test_what_the_operator_renders_runs_on_the_oldest_supported_kubernetes() -> None:
    """A 1.28 API server refused the operator's Deployment (`preStop.sleep: field not declared in
    schema`) while the chart claimed >=1.27: the goldens are validated at the chart's minimum."""
    minimum = tuple(int(x) for x in KUBE_VERSION.split(".")[:2])
    for golden in sorted((REPO / "tests" / "operator" / "golden").glob("*.yaml")):
        for obj in yaml.safe_load_all(golden.read_text()):
            if not obj or obj["kind"] in ("ServiceMonitor", "InferencePool", "HTTPRoute"):  # CRD kinds
                continue
            kubernetes_validate.validate(obj, KUBE_VERSION.rsplit(".", 1)[0], strict=True)
            if obj["kind"] != "Deployment":
                continue
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if "sleep" in ((container.get("lifecycle") or {}).get("preStop") or {}):
                    need = FEATURE_MINORS["lifecycle.preStop.sleep"]
                    assert minimum >= need, (
                        f"{golden.name}: preStop.sleep needs {need}, chart allows {minimum}"
                    )


@pytest.mark.parametrize("name", ["default", "namespaced"])
def test_rbac_holds_every_right_the_endpoint_picker_role_grants(render, name: str) -> None:
    """The API server refuses a Role granting rights its creator does not hold (escalation
    prevention); the operator has no ``escalate``/``bind``, so it must hold the picker's rights."""
    from autoglm_operator.routing import PICKER_RULES

    objects = render(VALUE_SETS.get(name, {}))
    kinds = ("ClusterRole",) if name == "default" else ("Role",)
    for rule in PICKER_RULES:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                held = grants(objects, group, resource, kinds)
                assert set(rule["verbs"]) <= held, f"{group}/{resource}: holds {held}"
