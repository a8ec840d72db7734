"""Valid CR specs and spec changes for the chaos runs, drawn with a seeded RNG (reproducible)."""

from __future__ import annotations

import copy
import random
from typing import Any

MODELS = ("hf://THUDM/glm-4-9b-chat", "hf://zai-org/AutoGLM-Phone-9B", "pvc://weights/THUDM/glm-4-9b-chat")
BASE: dict[str, Any] = {
    "model": {"source": "hf://THUDM/glm-4-9b-chat"},
    "quantization": "int8",
    "resources": {"gpu": {"count": 1, "product": "L4"}},
}

# Spec changes a user makes (each a merge patch of spec); None removes the field.
CHANGES: tuple[dict[str, Any], ...] = (
    {"quantization": "nf4"},
    {"quantization": "int8"},
    {"quantization": "auto"},
    {"autoscaling": {"minReplicas": 2, "maxReplicas": 4}},
    {"autoscaling": None, "replicas": 1},
    {"autoscaling": None, "replicas": 3},
    {"serving": {"maxBatchSize": 4, "maxConcurrentRequests": 16}},
    {"serving": {"maxNewTokens": 256}},
    {"resources": {"gpu": {"count": 1, "product": "L40S"}}},
    {"podDisruptionBudget": {"enabled": False}},
    {"model": {"cache": {"size": "40Gi"}}},
    {"quantization": "bf16", "resources": {"gpu": {"count": 1, "product": "T4"}}},  # does not fit
    {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},  # invalid: Degraded, no child touched
)


def random_spec(rng: random.Random) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["model"]["source"] = rng.choice(MODELS)
    for change in rng.sample(CHANGES[:-1], k=rng.randint(0, 3)):
        spec = merge(spec, change)
    return spec


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
