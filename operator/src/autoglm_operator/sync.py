"""Whether a child needs applying: the applied hash it carries, and what the watches saw of it.

A child whose ``autoglm.io/applied-hash`` equals the hash of what would be applied, and whose
content is the one last known in sync, is left alone: a resync of an unchanged spec makes no API
request, while a child edited behind the operator's back (its watch event changes its fingerprint)
is re-applied. The one read: a child first seen in the listing after the operator starts is
fetched once and compared in full with what would be applied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from autoglm_operator.cache import HASH_ANNOTATION, Cache, ChildRecord
from autoglm_operator.kube import Kind, Kube

__all__ = ["HASH_ANNOTATION", "applied_hash", "current", "in_sync", "record_in_sync", "with_hash"]


def applied_hash(obj: Mapping[str, Any]) -> str:
    """Stable hash of an object as it would be applied (without the hash annotation itself)."""
    data = json.loads(json.dumps(obj, sort_keys=True, default=str))
    (data.get("metadata", {}).get("annotations") or {}).pop(HASH_ANNOTATION, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def with_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(obj))
    out.setdefault("metadata", {}).setdefault("annotations", {})[HASH_ANNOTATION] = applied_hash(obj)
    return out


def _contains(live: Any, want: Any) -> bool:
    """Every field of ``want`` is in ``live`` with the same value (fields only ``live`` has, such as
    server defaults, are fine; scalars compare as text too, so ``1`` matches the server's ``"1"``)."""
    if isinstance(want, Mapping):
        return isinstance(live, Mapping) and all(k in live and _contains(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(_contains, live, want))
    return bool(live == want or str(live) == str(want))


def in_sync(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """No apply needed: the live child carries the applied hash of ``desired`` *and* still holds
    every field the operator sets. The hash alone misses drift: someone editing a child's fields
    (``kubectl edit``) leaves the annotation as it was."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if annotations.get(HASH_ANNOTATION) != desired["metadata"]["annotations"][HASH_ANNOTATION]:
        return False
    body = {k: v for k, v in desired.items() if k not in ("metadata", "status")}
    meta = desired.get("metadata") or {}
    return _contains(live, body) and _contains(
        live.get("metadata") or {},
        {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}},
    )


def current(
    cache: Cache, kube: Kube, kind: Kind, namespace: str, name: str, desired: Mapping[str, Any]
) -> ChildRecord | None:
    """The cache's record of a child; one read, the first time after the operator started, when the
    record came from the listing and was never compared in full with what the operator applies."""
    record = cache.child(kind.kind, namespace, name)
    if record is None or record.trusted is not None:
        return record
    current = kube.get(kind, namespace, name)
    if current is None:
        cache.forget_child(kind.kind, namespace, name)
        return None
    return cache.verify(record, current, in_sync(current, desired))


def record_in_sync(record: ChildRecord, desired: Mapping[str, Any]) -> bool:
    """No apply needed: the child carries the applied hash of ``desired`` and nobody changed it since
    it was last known to be in sync (nor its replica count, where the operator sets one)."""
    if record.trusted is None or record.drifted:
        return False
    if record.applied_hash != desired["metadata"]["annotations"][HASH_ANNOTATION]:
        return False
    replicas = (
        (desired.get("spec") or {}).get("replicas") if isinstance(desired.get("spec"), Mapping) else None
    )
    return replicas is None or record.replicas == replicas
