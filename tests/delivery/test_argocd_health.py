"""The Argo CD health check (Lua), run by a real Lua interpreter (lupa) over a table of CR statuses,
the way Argo CD runs it: the object as the global ``obj``, the chunk returning ``{status, message}``."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.conftest import REPO

lupa = pytest.importorskip("lupa")

SCRIPT = (REPO / "deploy" / "argocd" / "health-autoglmdeployment.lua").read_text()


def health(cr: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(cr, recursive=True)
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def cr(generation: int = 2, observed: int | None = 2, **conditions: Any) -> dict[str, Any]:
    """An AutoGLMDeployment with conditions given as Type=(status, message)."""
    obj: dict[str, Any] = {
        "apiVersion": "autoglm.io/v1alpha1",
        "kind": "AutoGLMDeployment",
        "metadata": {"name": "glm4-chat", "namespace": "ml", "generation": generation},
        "spec": {"model": {"source": "hf://THUDM/glm-4-9b-chat"}},
    }
    if observed is not None or conditions:
        obj["status"] = {"conditions": []}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
        for type_, (status, message) in conditions.items():
            obj["status"]["conditions"].append(
                {
                    "type": type_,
                    "status": status,
                    "reason": f"{type_}Reason",
                    "message": message,
                    "observedGeneration": observed or 0,
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            )
    return obj


CASES = [
    ("new CR, no status yet", {"generation": 1, "observed": None}, "Progressing", "Waiting for the operator"),
    (
        "spec edited, not yet seen",
        {"generation": 3, "observed": 2, "Ready": ("True", "Serving")},
        "Progressing",
        "generation 3",
    ),
    (
        "ready",
        {
            "Ready": ("True", "2/2 replicas serve glm-4-9b-chat (int8)"),
            "Progressing": ("False", "Done"),
            "Degraded": ("False", ""),
            "MemoryFit": ("True", "10.1 GiB of 22 GiB"),
        },
        "Healthy",
        "2/2 replicas",
    ),
    (
        "loading weights",
        {
            "Ready": ("False", "0/1 ready"),
            "Progressing": ("True", "Loading the model"),
            "MemoryFit": ("True", "fits"),
        },
        "Progressing",
        "Loading the model",
    ),
    (
        "invalid spec",
        {"Degraded": ("True", "spec.autoscaling: minReplicas 5 > maxReplicas 2"), "Ready": ("False", "")},
        "Degraded",
        "spec.autoscaling",
    ),
    (
        "does not fit",
        {
            "MemoryFit": ("False", "bf16 needs 17.5 GiB, the GPU has 15 GiB; try int8"),
            "Degraded": ("False", ""),
            "Ready": ("False", ""),
        },
        "Degraded",
        "try int8",
    ),
    (
        "degraded wins over ready",
        {"Ready": ("True", "ok"), "Degraded": ("True", "drift repair failing")},
        "Degraded",
        "drift repair",
    ),
    (
        "stuck: not ready, not progressing",
        {"Ready": ("False", "0/1 ready: CrashLoopBackOff"), "Progressing": ("False", "deadline exceeded")},
        "Degraded",
        "CrashLoopBackOff",
    ),
    ("observed, no conditions yet", {}, "Progressing", "Waiting for the model"),
    (
        "serving, autoscaler cannot scale: healthy, and says so",
        {
            "Ready": ("True", "2/2 replicas ready"),
            "Degraded": ("False", ""),
            "Autoscaling": ("False", "HPA: no custom metrics API; install prometheus-adapter"),
        },
        "Healthy",
        "autoscaler inactive (AutoscalingReason): HPA: no custom metrics API",
    ),
    (
        "loading, autoscaler cannot scale",
        {"Ready": ("False", "0/1 ready"), "Progressing": ("True", "Loading"), "Autoscaling": ("False", "x")},
        "Progressing",
        "autoscaler inactive",
    ),
    (
        "autoscaler active adds nothing",
        {"Ready": ("True", "ok"), "Autoscaling": ("True", "The HPA reads its metric")},
        "Healthy",
        "ok",
    ),
    ("degraded without a message uses the reason", {"Degraded": ("True", "")}, "Degraded", "DegradedReason"),
]


@pytest.mark.parametrize(("case", "given", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_health(case: str, given: dict[str, Any], status: str, message: str) -> None:
    args = {k: given.pop(k) for k in ("generation", "observed") if k in given}
    got_status, got_message = health(cr(**args, **given))
    assert got_status == status
    assert message in got_message


def test_every_condition_the_crd_knows_is_handled() -> None:
    """The script reads the condition types the API defines; a renamed type would silently break it."""
    from autoglm_operator.api import ConditionType

    for type_ in ConditionType:
        assert f'"{type_.value}"' in SCRIPT


def test_docs_embed_the_same_script() -> None:
    """docs/gitops.md shows the argocd-cm snippet; it must be this script, line for line."""
    docs = (REPO / "docs" / "gitops.md").read_text()
    block = docs.split("resource.customizations.health.autoglm.io_AutoGLMDeployment: |", 1)[1]
    lines = [line[4:] for line in block.split("```", 1)[0].splitlines()[1:]]
    assert "\n".join(lines).strip() == SCRIPT.strip()
    yaml.safe_load(docs.split("```yaml", 1)[1].split("```", 1)[0])
