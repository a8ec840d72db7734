"""Names, labels and owner references of everything the operator creates for one AutoGLMDeployment.

The one label helper of the Python side (the Helm chart has its own in ``_helpers.tpl``). Selector
labels (name + instance) never change across versions: a Deployment's selector is immutable, so
anything that varies (version, component) stays out of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from autoglm_operator import api

APP_NAME = "autoglm-runtime"
PART_OF = "autoglm"
MANAGED_BY = "autoglm-operator"
COMPONENT = "inference"
PICKER_APP_NAME = "autoglm-endpoint-picker"
PICKER_COMPONENT = "endpoint-picker"
# The label llm-d's core-metrics-extractor reads to find a pod's engine (its engineConfigs entry).
ENGINE_TYPE_LABEL = "llm-d.ai/engine-type"
ENGINE_TYPE = "autoglm"

_LABEL_VALUE_MAX = 63
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")


def label_value(text: str) -> str:
    """``text`` made into a valid label value (<= 63 chars, alphanumeric at both ends)."""
    value = _LABEL_VALUE_BAD.sub("-", text)[:_LABEL_VALUE_MAX]
    return value.strip("-_.")


def selector_labels(instance: str) -> dict[str, str]:
    """Labels that select the pods of one CR; stable for the life of the CR."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": instance}


def common_labels(instance: str, version: str) -> dict[str, str]:
    """Labels on every child object (and on the pods)."""
    labels = {
        **selector_labels(instance),
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    if value := label_value(version):
        labels["app.kubernetes.io/version"] = value
    return labels


def picker_selector_labels(instance: str) -> dict[str, str]:
    """Labels that select one CR's endpoint-picker pods (never its runtime pods: another name)."""
    return {"app.kubernetes.io/name": PICKER_APP_NAME, "app.kubernetes.io/instance": instance}


def picker_labels(instance: str, version: str) -> dict[str, str]:
    """Labels on the endpoint picker's objects and pods: the runtime's Service, Deployment and
    InferencePool select ``app.kubernetes.io/name=autoglm-runtime`` and so never the picker's pods."""
    return {
        **common_labels(instance, version),
        **picker_selector_labels(instance),
        "app.kubernetes.io/component": PICKER_COMPONENT,
    }


def selector_string(instance: str) -> str:
    """The pods' label selector as ``status.selector`` (scale subresource) wants it."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(instance).items())


# Child names. The Deployment, Service, HPA, PDB and ServiceMonitor share the CR's name (each
# kind has its own namespace of names); the ConfigMap and PVC get a suffix that says what they are.


def workload_name(cr_name: str) -> str:
    return cr_name


def settings_name(cr_name: str) -> str:
    return f"{cr_name}-settings"


def cache_claim_name(cr_name: str) -> str:
    return f"{cr_name}-model-cache"


def picker_name(cr_name: str) -> str:
    """The endpoint picker's Deployment, Service, ServiceAccount, Role, RoleBinding and ConfigMap."""
    return f"{cr_name}-epp"


def owner_reference(cr: Mapping[str, Any]) -> dict[str, Any] | None:
    """Controller owner reference to the CR, or None when the CR has no uid (offline render).

    With the reference, deleting the CR garbage-collects every child (no finalizer needed) and
    ``blockOwnerDeletion`` keeps a foreground delete waiting for them.
    """
    meta = cr.get("metadata") or {}
    uid = meta.get("uid")
    if not uid:
        return None
    return {
        "apiVersion": cr.get("apiVersion") or api.API_VERSION,
        "kind": cr.get("kind") or api.KIND,
        "name": meta["name"],
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
