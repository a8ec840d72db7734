"""Nobody let in: least-privilege RBAC in the chart, restricted pods for every example and fuzzed spec,
and no Secret value anywhere the operator writes or logs (it must never read Secrets at all)."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from autoglm_operator import api
from autoglm_operator.render import SpecError, render
from tests.conftest import EXAMPLES, REPO
from tests.operator.e2e.harness import Harness
from tests.operator.render_helpers import OPERATOR_VERSION
from tests.operator.test_render_fuzz import crs

from . import summary
from .chaos import wait_converged
from .podsecurity import restricted_problems

HELM = REPO / ".venv" / "bin" / "helm"
CHART = REPO / "charts" / "autoglm-operator"
CANARY = "canary-7f3a9c-DO-NOT-LEAK"


def _chart_objects(*values: str) -> list[dict[str, Any]]:
    args = [str(HELM), "template", "rel", str(CHART), "--namespace", "autoglm-system"]
    for v in values:
        args += ["--set", v]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.skipif(
    not HELM.exists() or not (CHART / "Chart.yaml").exists(), reason="needs .venv/bin/helm and the chart"
)
@pytest.mark.parametrize(
    "values", [(), ("watchNamespaces={ml,serving}",)], ids=["cluster-wide", "namespaced"]
)
def test_chart_rbac_is_least_privilege(values: tuple[str, ...]) -> None:
    try:
        objects = _chart_objects(*values)
    except subprocess.CalledProcessError as e:
        if values:
            pytest.skip(f"the chart has no such value ({values}): {e.stderr.strip()[:200]}")
        raise
    rules = [
        (o["kind"], o["metadata"]["name"], r)
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
        for r in o.get("rules") or []
    ]
    problems = []
    for kind, name, rule in rules:
        where = f"{kind} {name}"
        for field in ("verbs", "resources", "apiGroups"):
            if "*" in (rule.get(field) or []):
                problems.append(f"{where}: wildcard {field}")
        if "secrets" in (rule.get("resources") or []) and set(rule.get("verbs") or []) & {
            "get",
            "list",
            "watch",
        }:
            problems.append(f"{where}: reads Secrets")
        if {"escalate", "bind", "impersonate"} & set(rule.get("verbs") or []):
            problems.append(f"{where}: privilege verbs {rule['verbs']}")
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    for b in bindings:
        if b["roleRef"]["name"] in ("cluster-admin", "admin", "edit"):
            problems.append(f"{b['kind']} {b['metadata']['name']} binds {b['roleRef']['name']}")
    pods = [o for o in objects if o["kind"] == "Deployment"]
    for dep in pods:
        problems += [f"operator pod: {p}" for p in restricted_problems(dep, api_client=True)]
    summary.record(
        "security",
        f"chart RBAC least privilege ({'namespaced' if values else 'cluster-wide'})",
        cases=len(rules),
        failures=len(problems),
        bindings=len(bindings),
    )
    assert rules, "the chart renders no RBAC rules"
    assert problems == [], problems


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_render_restricted_pods(example: Path) -> None:
    obj = yaml.safe_load(example.read_text())
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    obj.setdefault("spec", {}).setdefault("memory", {})["skipFitCheck"] = True  # always render the pods
    deployments = [
        o for o in render(obj, operator_version=OPERATOR_VERSION).objects if o["kind"] == "Deployment"
    ]
    problems = [p for d in deployments for p in restricted_problems(d)]
    summary.record(
        "security", f"restricted pods: example {example.stem}", cases=len(deployments), failures=len(problems)
    )
    assert deployments
    assert problems == [], problems


def test_fuzzed_specs_render_restricted_pods() -> None:
    n = summary.scale(30, 800)
    seen = {"cases": 0, "deployments": 0, "failures": 0}

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(crs())
    def check(obj: dict[str, Any]) -> None:
        seen["cases"] += 1
        try:
            objects = render(obj, operator_version=OPERATOR_VERSION).objects
        except SpecError:
            return
        for o in objects:
            if o["kind"] == "Deployment":
                seen["deployments"] += 1
                assert restricted_problems(o) == [], restricted_problems(o)

    try:
        check()
    except Exception:
        seen["failures"] += 1
        raise
    finally:
        summary.record(
            "security",
            "restricted pods: fuzzed specs",
            cases=seen["cases"],
            failures=seen["failures"],
            deployments=seen["deployments"],
        )


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _create_secret(namespace: str, name: str, data: dict[str, str]) -> None:
    from kubernetes import client, config

    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: _b64(v) for k, v in data.items()},
    }
    with config.new_client_from_config(config_file=os.environ.get("KUBECONFIG")) as api_client:
        client.CoreV1Api(api_client).create_namespaced_secret(namespace, body)


async def test_no_secret_value_leaks_and_secrets_are_never_read(chaos: Harness) -> None:
    """Secrets holding a canary exist and are named by the CRs: the canary must appear in no object
    the operator wrote, no status, no Event, no log line; and the operator must never read Secrets."""
    emu = chaos.emulator
    secrets = {
        "hf-token": {"token": CANARY},
        "api-keys": {"keys": f"{CANARY}-key1\n{CANARY}-key2"},
        "tls": {"tls.crt": f"{CANARY}-crt", "tls.key": f"{CANARY}-key"},
    }
    for name, data in secrets.items():
        await chaos.call(_create_secret, chaos.namespace, name, data)
    assert len(emu.objects_of("secrets", chaos.namespace)) == 3
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        spec = {
            "model": {"source": "hf://THUDM/glm-4-9b-chat", "credentialsSecret": "hf-token"},
            "quantization": "int8",
            "resources": {"gpu": {"count": 1, "product": "L4"}},
            "serving": {"apiKeySecret": {"name": "api-keys", "key": "keys"}, "tlsSecret": "tls"},
        }
        await chaos.start_operator(resync_seconds=0.5)
        await chaos.create_cr("secure", spec)
        await chaos.create_cr("broken", {**spec, "autoscaling": {"minReplicas": 3, "maxReplicas": 1}})
        assert await wait_converged(chaos, timeout=30) == []
        await chaos.settle(1.5)  # a few resyncs
    finally:
        logging.getLogger().removeHandler(capture)
        logging.getLogger().setLevel(old_level)
    places = 0
    leaks = []
    for (res, _, _), obj in list(emu._objects.items()):
        if obj.deleted or res.plural == "secrets":
            continue
        places += 1
        text = json.dumps(obj.raw)
        if CANARY in text or _b64(CANARY)[:16] in text:
            leaks.append(f"{res.plural} {obj.raw['metadata'].get('name')}")
    for line in capture.lines:
        places += 1
        if CANARY in line:
            leaks.append(f"log: {line[:120]}")
    reads = emu.reads_of("secrets")
    events = len(emu.objects_of("events", chaos.namespace))
    summary.record(
        "security",
        "canary Secret values never leak; Secrets never read",
        cases=places,
        failures=len(leaks) + reads,
        log_lines=len(capture.lines),
        events=events,
        secret_reads=reads,
    )
    assert capture.lines, "no log line was captured: the check proves nothing"
    assert leaks == [], leaks
    assert reads == 0, f"the operator read Secrets {reads} times"
    cr = await chaos.get(api.KIND, "secure")
    assert cr["status"]["endpoint"].startswith("https://")
