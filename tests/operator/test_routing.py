"""spec.routing: the InferencePool over exactly the CR's pods, llm-d's endpoint picker with its
config and least RBAC, the HTTPRoute — validated against the released CRDs in ../shared/crds."""

from __future__ import annotations

import copy
import logging
from typing import Any

import jsonschema
import pytest
import yaml

from autoglm_operator import labels, routing
from autoglm_operator.cache import Cache
from autoglm_operator.kube import KINDS, KubeApiError
from autoglm_operator.reconcile import APPLY_ORDER, OPTIONAL_KINDS, PRUNABLE, reconcile
from autoglm_operator.render import Rendered, SpecError, render
from tests.conftest import REPO
from tests.operator.render_helpers import OPERATOR_VERSION, cr, crd_schema, validate_object
from tests.operator.test_reconcile import FakeKube, _with_status

ROUTED = REPO / "examples" / "autoglm-phone-9b-routed.yaml"
UID = "6d1f2a0e-3b4c-4d5e-8f90-a1b2c3d4e5f6"


def routed(*, spec: dict[str, Any] | None = None, **routing_spec: Any) -> dict[str, Any]:
    """A CR with routing on (``routing_spec`` overrides spec.routing's fields, ``spec`` others)."""
    return cr(uid=UID, routing={"inferencePool": {"enabled": True}, **routing_spec}, **(spec or {}))


def run(obj: dict[str, Any]) -> Rendered:
    return render(obj, operator_version=OPERATOR_VERSION)


def find(r: Rendered, kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in r.objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def selects(selector: dict[str, str], pod_labels: dict[str, str]) -> bool:
    return all(pod_labels.get(k) == v for k, v in selector.items())


ROUTE = {
    "parentRefs": [{"name": "inference-gateway", "namespace": "gateway"}],
    "hostnames": ["glm.example.com"],
}


def test_off_by_default_nothing_routed_and_no_engine_label() -> None:
    r = run(cr())
    kinds = {o["kind"] for o in r.objects}
    assert not kinds & {"InferencePool", "HTTPRoute", "Role", "RoleBinding", "ServiceAccount"}
    pod_labels = find(r, "Deployment", "glm")["spec"]["template"]["metadata"]["labels"]
    assert labels.ENGINE_TYPE_LABEL not in pod_labels


def test_the_routed_example_renders_every_routing_object_valid() -> None:
    r = run(yaml.safe_load(ROUTED.read_text()))
    name, picker = "phone-agent", "phone-agent-epp"
    wanted = {
        ("InferencePool", name),
        ("HTTPRoute", name),
        ("ServiceAccount", picker),
        ("Role", picker),
        ("RoleBinding", picker),
        ("ConfigMap", picker),
        ("Service", picker),
        ("Deployment", picker),
    }
    assert wanted <= {(o["kind"], o["metadata"]["name"]) for o in r.objects}
    for obj in r.objects:
        validate_object(obj)  # the routing kinds against the released CRDs, the rest against Kubernetes'
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == name
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == labels.MANAGED_BY


def test_the_crd_check_refuses_what_the_api_server_would() -> None:
    pool = find(run(routed()), "InferencePool", "glm")
    bad = copy.deepcopy(pool)
    bad["spec"]["targetPorts"] = [{"number": 70000}]
    with pytest.raises(jsonschema.ValidationError):
        validate_object(bad)
    bad = copy.deepcopy(pool)
    bad["spec"]["endpointPicker"] = bad["spec"].pop("endpointPickerRef")  # a misspelled field
    with pytest.raises(jsonschema.ValidationError):
        validate_object(bad)


def test_pool_selects_exactly_this_crs_runtime_pods_on_the_runtime_port() -> None:
    r = run(routed(spec={"serving": {"port": 8080}}))
    pool = find(r, "InferencePool", "glm")["spec"]
    runtime = find(r, "Deployment", "glm")["spec"]
    picker = find(r, "Deployment", "glm-epp")["spec"]
    runtime_pods = runtime["template"]["metadata"]["labels"]
    picker_pods = picker["template"]["metadata"]["labels"]
    assert pool["selector"]["matchLabels"] == runtime["selector"]["matchLabels"]
    assert selects(pool["selector"]["matchLabels"], runtime_pods)
    assert not selects(pool["selector"]["matchLabels"], picker_pods)  # the picker is no endpoint
    assert not selects(find(r, "Service", "glm")["spec"]["selector"], picker_pods)
    assert not selects(runtime["selector"]["matchLabels"], picker_pods)  # no ReplicaSet overlap
    assert not selects(picker["selector"]["matchLabels"], runtime_pods)
    other = run(routed() | {"metadata": {"name": "other", "namespace": "ml", "uid": UID}})
    other_pods = find(other, "Deployment", "other")["spec"]["template"]["metadata"]["labels"]
    assert not selects(pool["selector"]["matchLabels"], other_pods)  # another CR's pods
    assert pool["targetPorts"] == [{"number": 8080}]
    assert pool["endpointPickerRef"]["name"] == "glm-epp"
    service_ports = {p["name"]: p["port"] for p in find(r, "Service", "glm-epp")["spec"]["ports"]}
    assert pool["endpointPickerRef"]["port"]["number"] == service_ports["grpc-ext-proc"]


def test_runtime_pods_carry_the_engine_type_the_picker_config_names() -> None:
    r = run(routed())
    pod_labels = find(r, "Deployment", "glm")["spec"]["template"]["metadata"]["labels"]
    config = yaml.safe_load(find(r, "ConfigMap", "glm-epp")["data"][routing.CONFIG_FILE])
    assert config["kind"] == "EndpointPickerConfig"
    plugins = {p["type"]: p for p in config["plugins"]}
    extractor = plugins["core-metrics-extractor"]["parameters"]
    assert pod_labels[extractor["engineLabelKey"]] == extractor["defaultEngine"]
    (engine,) = extractor["engineConfigs"]
    assert engine["name"] == pod_labels[extractor["engineLabelKey"]]
    scorers = {p["pluginRef"]: p["weight"] for p in config["schedulingProfiles"][0]["plugins"]}
    assert set(scorers) == {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"}
    assert set(scorers) <= set(plugins)
    assert plugins["metrics-data-source"]["parameters"]["scheme"] == "http"


def test_a_config_change_rolls_the_picker_and_tls_scrapes_https() -> None:
    plain = run(routed())
    tls = run(routed(spec={"serving": {"tlsSecret": "glm-tls"}}))
    config = yaml.safe_load(find(tls, "ConfigMap", "glm-epp")["data"][routing.CONFIG_FILE])
    source = next(p for p in config["plugins"] if p["type"] == "metrics-data-source")
    assert source["parameters"]["scheme"] == "https"

    def checksum(r: Rendered) -> str:
        meta = find(r, "Deployment", "glm-epp")["spec"]["template"]["metadata"]
        return str(meta["annotations"][routing.CONFIG_CHECKSUM_ANNOTATION])

    assert checksum(plain) != checksum(tls)


def test_picker_is_restricted_like_everything_else_and_reads_only() -> None:
    r = run(
        routed(
            inferencePool={
                "enabled": True,
                "endpointPicker": {"replicas": 2, "image": "registry.local/epp:v1"},
            }
        )
    )
    deployment = find(r, "Deployment", "glm-epp")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    runtime_container = find(r, "Deployment", "glm")["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"] == runtime_container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["image"] == "registry.local/epp:v1"
    assert deployment["spec"]["replicas"] == 2
    assert container["resources"]["limits"]["memory"]
    assert spec["serviceAccountName"] == "glm-epp"
    args = container["args"]
    assert "--secure-serving=false" not in args  # llm-d's default: ext-proc over TLS
    plain = run(routed(inferencePool={"enabled": True, "endpointPicker": {"secureServing": False}}))
    assert (
        "--secure-serving=false"
        in find(plain, "Deployment", "glm-epp")["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert args[args.index("--pool-name") + 1] == "glm"
    assert args[args.index("--pool-namespace") + 1] == "ml"
    role = find(r, "Role", "glm-epp")
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    resources = {res for rule in role["rules"] for res in rule["resources"]}
    assert "secrets" not in resources
    binding = find(r, "RoleBinding", "glm-epp")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "glm-epp", "namespace": "ml"}]
    for obj in r.objects:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID


def test_route_sends_the_openai_paths_to_the_pool_and_sets_the_endpoint() -> None:
    r = run(routed(httpRoute=ROUTE))
    route = find(r, "HTTPRoute", "glm")["spec"]
    assert route["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gateway",
            "namespace": "gateway",
        }
    ]
    assert route["hostnames"] == ["glm.example.com"]
    (rule,) = route["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "glm"}
    ]
    assert routing.route_endpoint(r.spec) == "http://glm.example.com/v1"
    https = run(routed(httpRoute={**ROUTE, "scheme": "https"}))
    assert routing.route_endpoint(https.spec) == "https://glm.example.com/v1"
    assert "HTTPRoute" not in {o["kind"] for o in run(routed()).objects}
    assert routing.route_endpoint(run(routed()).spec) is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"routing": {"httpRoute": ROUTE}}, "spec.routing.httpRoute"),
        (
            {
                "routing": {"inferencePool": {"enabled": True}},
                "serving": {"tlsSecret": "t", "clientCaSecret": {"name": "ca"}},
            },
            "spec.routing",
        ),
        ({"routing": {"inferencePool": {"enabled": True}, "httpRoute": {"parentRefs": []}}}, "parentRefs"),
    ],
)
def test_invalid_routing_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        run(cr(**spec))
    assert field in str(info.value)


def test_the_operator_knows_every_routing_kind() -> None:
    for kind in ("InferencePool", "HTTPRoute", "ServiceAccount", "Role", "RoleBinding"):
        assert kind in KINDS
        assert kind in APPLY_ORDER
        assert kind in PRUNABLE
    assert {"InferencePool", "HTTPRoute"} <= OPTIONAL_KINDS
    # the picker's ServiceAccount and rights exist before its pods; the route after the pool
    assert APPLY_ORDER.index("RoleBinding") < APPLY_ORDER.index("Deployment")
    assert APPLY_ORDER.index("InferencePool") < APPLY_ORDER.index("HTTPRoute")
    assert crd_schema("inference.networking.k8s.io/v1", "InferencePool")["properties"]["spec"]


def test_reconcile_without_the_pool_crd_serves_through_the_service_and_says_so() -> None:
    class NoPoolKube(FakeKube):
        def apply(self, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
            if obj["kind"] in ("InferencePool", "HTTPRoute"):
                raise KubeApiError(404, "NotFound", "the server could not find the requested resource")
            return super().apply(obj, **kw)

    body = _with_status(routed(httpRoute=ROUTE), None)
    body["metadata"]["generation"] = 1
    kube = NoPoolKube()
    outcome = reconcile(body, kube, logging.getLogger("test"))
    applied = {k for k, _ in kube.objects}
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"} <= applied
    assert ("Deployment", "glm") in kube.objects
    assert outcome.status is not None
    text = yaml.safe_dump(outcome.status)
    assert "InferencePool skipped" in text
    assert "HTTPRoute skipped" in text
    # the Deployment status is the runtime's, not the picker's
    assert outcome.status["selector"] == labels.selector_string("glm")


def test_reconcile_status_endpoint_is_the_gateway_host() -> None:
    body = _with_status(routed(httpRoute=ROUTE), None)
    body["metadata"]["generation"] = 1
    kube, cache = FakeKube(), Cache()  # the cache stands for the operator's watches
    outcome = reconcile(body, kube, logging.getLogger("test"), cache=cache)
    assert ("InferencePool", "glm") in kube.objects
    assert ("HTTPRoute", "glm") in kube.objects
    assert outcome.status is not None
    assert outcome.status["endpoint"] == "http://glm.example.com/v1"
    # turning routing off prunes every routing object
    off = _with_status(cr(uid=UID), outcome.status)
    off["metadata"]["generation"] = 2
    reconcile(off, kube, logging.getLogger("test"), cache=cache)
    left = {k for k, _ in kube.objects}
    assert not left & {"InferencePool", "HTTPRoute", "Role", "RoleBinding", "ServiceAccount"}
    assert ("Deployment", "glm-epp") not in kube.objects
    assert ("Deployment", "glm") in kube.objects
