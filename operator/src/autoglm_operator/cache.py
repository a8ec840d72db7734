"""What the operator knows of the cluster, fed by its watches: an idle reconcile reads nothing else.

Kopf's watches deliver every AutoGLMDeployment, every child the operator labelled (server-side
label selector ``app.kubernetes.io/managed-by=autoglm-operator``) and every GPU-labelled node. This
module keeps of them only what reconciling needs — small records, not whole bodies:

* **CRs**: the latest body (spec and status, no ``managedFields``, no annotations; compressed JSON), so a reconcile
  never re-reads the CR; after a status patch the patch's response replaces it, and the watch's
  echo of that write (same ``resourceVersion``) is recognised and causes no second reconcile.
* **children**: per object its uid, owner uid, the ``autoglm.io/applied-hash`` annotation, a
  *fingerprint* of its content (everything but status and server-managed metadata), the
  fingerprint last known to be in sync (taken from the operator's own apply response, or from one
  full comparison with the desired object after the operator starts), and a tiny view of its
  status where the CR's status depends on it (a Deployment's rollout counts, an autoscaler's
  conditions). A child is in sync when its hash is the desired one and its fingerprint is the
  trusted one: an edit behind the operator's back (``kubectl edit``) changes the fingerprint, the
  watch reports it, and the owner is reconciled.

GPU nodes' labels (for the memory planner) are a kopf index (``handlers.py``): kopf fills indexes
from the initial listing before any handler runs, so no CR is planned on half the nodes.

Pruning asks the owner index, not the API server.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoglm_operator import api

HASH_ANNOTATION = "autoglm.io/applied-hash"
# Metadata the API server or other controllers maintain: never drift.
_VOLATILE_METADATA = frozenset(
    {"resourceVersion", "generation", "managedFields", "uid", "creationTimestamp", "selfLink", "finalizers"}
)
_VOLATILE_ANNOTATION_PREFIXES = ("deployment.kubernetes.io/",)


def newer(a: str | None, b: str | None) -> bool:
    """Whether resourceVersion ``a`` is newer than ``b``. Opaque to clients in principle; etcd's are
    integers, which every controller in practice relies on. Unknown orderings count as newer."""
    if not b:
        return True
    if not a:
        return False
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


def fingerprint(obj: Mapping[str, Any]) -> str:
    """A digest of what others could change: the content without status, server-managed metadata
    and ``spec.replicas`` (an autoscaler's field when autoscaling is on; checked apart)."""
    meta = obj.get("metadata") or {}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith(_VOLATILE_ANNOTATION_PREFIXES)
    }
    content: dict[str, Any] = {
        k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")
    }
    if isinstance(content.get("spec"), Mapping) and "replicas" in content["spec"]:
        content["spec"] = {k: v for k, v in content["spec"].items() if k != "replicas"}
    content["metadata"] = {
        "labels": meta.get("labels") or {},
        "annotations": annotations,
        "ownerReferences": meta.get("ownerReferences") or [],
        **{k: v for k, v in meta.items() if k not in _VOLATILE_METADATA and k not in (
            "labels", "annotations", "ownerReferences", "namespace", "name")},
    }
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def status_view(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of a child the CR's status reads, as a small object of the same shape (or None)."""
    kind = obj.get("kind")
    status = obj.get("status") or {}
    if kind == "Deployment":
        keep = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
        return {
            "kind": kind,
            "metadata": {"generation": (obj.get("metadata") or {}).get("generation")},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
            "status": {
                **{k: status[k] for k in keep if k in status},
                "conditions": [
                    {k: c.get(k) for k in ("type", "status", "reason", "message")}
                    for c in status.get("conditions") or []
                    if c.get("type") in ("Progressing", "ReplicaFailure")
                ],
            },
        }
    if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        return {
            "kind": kind,
            "status": {
                "conditions": [
                    {k: c.get(k) for k in ("type", "status", "reason", "message")}
                    for c in status.get("conditions") or []
                ]
            },
        }
    return None


def _owner_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and str(ref.get("apiVersion", "")).startswith(f"{api.GROUP}/"):
            return str(ref.get("uid") or "") or None
    return None


@dataclass(slots=True)
class ChildRecord:
    """What the operator keeps of one child."""

    kind: str
    namespace: str
    name: str
    uid: str
    owner_uid: str | None
    resource_version: str
    applied_hash: str | None
    fingerprint: str
    replicas: int | None
    view: dict[str, Any] | None
    trusted: str | None = None  # the fingerprint known to be in sync; None: not verified yet

    @property
    def drifted(self) -> bool:
        return self.trusted is not None and self.fingerprint != self.trusted


def record_of(obj: Mapping[str, Any]) -> ChildRecord:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    return ChildRecord(
        kind=str(obj.get("kind", "")),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid") or ""),
        owner_uid=_owner_uid(obj),
        resource_version=str(meta.get("resourceVersion") or ""),
        applied_hash=(meta.get("annotations") or {}).get(HASH_ANNOTATION),
        fingerprint=fingerprint(obj),
        replicas=spec.get("replicas") if isinstance(spec, Mapping) else None,
        view=status_view(obj),
    )


class Change(enum.Enum):
    """What a child's watch event means for its owner."""

    NONE = "none"  # nothing the owner cares about (e.g. the echo of the operator's own apply)
    STATUS = "status"  # the part of its status the CR reports moved
    DRIFT = "drift"  # its content moved away from what was applied
    GONE = "gone"  # deleted (or no longer labelled as ours)


Key = tuple[str, str, str]  # (kind, namespace, name)


def _locked(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(self: Cache, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


@dataclass
class Cache:
    """The operator's view of the cluster (one per operator process; the event loop is its only
    writer, reconciles in worker threads read and record their own writes under the CR's lock)."""

    crs: dict[tuple[str, str], CrEntry] = field(default_factory=dict)
    children: dict[Key, ChildRecord] = field(default_factory=dict)
    by_owner: dict[str, set[Key]] = field(default_factory=dict)
    checked_generation: dict[str, int] = field(default_factory=dict)  # CR uid → CEL-checked generation
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- CRs ----------------------------------------------------------------------------------

    @_locked
    def observe_cr(self, body: Mapping[str, Any]) -> bool:
        """Keep the CR's newest body; True when it is news (not older than, nor the echo of, what
        the cache holds)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name", "")))
        held = self.crs.get(key)
        rv = str(meta.get("resourceVersion") or "")
        if held is not None and held.uid == meta.get("uid") and not newer(rv, held.resource_version):
            return False
        self.crs[key] = CrEntry.of(body)
        return True

    def record_cr(self, body: Mapping[str, Any]) -> None:
        """The CR as a write of the operator's returned it (a status patch's response)."""
        self.observe_cr(body)

    def cr(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The CR as the cache holds it (a fresh copy: the caller may keep or change it)."""
        held = self.crs.get((namespace, name))
        return held.body() if held is not None else None

    @_locked
    def forget_cr(self, namespace: str, name: str) -> None:
        held = self.crs.pop((namespace, name), None)
        if held is not None:
            self.checked_generation.pop(held.uid, None)

    def cel_checked(self, uid: str, generation: Any) -> bool:
        """Whether this generation of the CR already passed the CRD's CEL rules."""
        return bool(uid) and isinstance(generation, int) and self.checked_generation.get(uid) == generation

    def mark_cel_checked(self, uid: str, generation: Any) -> None:
        if uid and isinstance(generation, int):
            self.checked_generation[uid] = generation

    # -- children -----------------------------------------------------------------------------

    @_locked
    def observe_child(self, body: Mapping[str, Any], type_: str | None) -> Change:
        meta = body.get("metadata") or {}
        key: Key = (str(body.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", "")))
        held = self.children.get(key)
        if type_ == "DELETED":
            if held is not None and held.uid == str(meta.get("uid") or ""):
                self._drop(key)
                return Change.GONE
            return Change.NONE
        rv = str(meta.get("resourceVersion") or "")
        if held is not None and held.uid == str(meta.get("uid") or "") and not newer(rv, held.resource_version):
            return Change.NONE
        new = record_of(body)
        if held is not None and held.uid == new.uid:
            new.trusted = held.trusted
        self._put(key, new)
        if held is None or held.uid != new.uid:
            return Change.STATUS if new.view is not None else Change.NONE
        if new.drifted and new.fingerprint != held.fingerprint:
            return Change.DRIFT
        if new.view != held.view or new.replicas != held.replicas:
            return Change.STATUS
        return Change.NONE

    @_locked
    def record_applied(self, body: Mapping[str, Any]) -> ChildRecord:
        """A child as the operator's own apply left it: in sync by definition."""
        new = record_of(body)
        new.trusted = new.fingerprint
        held = self.children.get((new.kind, new.namespace, new.name))
        if held is not None and held.uid == new.uid and not newer(new.resource_version, held.resource_version):
            # The watch already delivered a newer state; keep it, but trust what was applied.
            held.trusted = new.fingerprint
            return held
        self._put((new.kind, new.namespace, new.name), new)
        return new

    @_locked
    def verify(self, record: ChildRecord, body: Mapping[str, Any], in_sync: bool) -> ChildRecord:
        """One full comparison after the operator started (the record came from a listing)."""
        new = record_of(body)
        if in_sync:
            new.trusted = new.fingerprint
        self._put((new.kind, new.namespace, new.name), new)
        return new

    def child(self, kind: str, namespace: str, name: str) -> ChildRecord | None:
        return self.children.get((kind, namespace, name))

    @_locked
    def owned(self, owner_uid: str) -> list[ChildRecord]:
        return [self.children[k] for k in sorted(self.by_owner.get(owner_uid, ())) if k in self.children]

    @_locked
    def forget_child(self, kind: str, namespace: str, name: str) -> None:
        self._drop((kind, namespace, name))

    def _put(self, key: Key, record: ChildRecord) -> None:
        old = self.children.get(key)
        if old is not None and old.owner_uid and old.owner_uid != record.owner_uid:
            self._unindex(old.owner_uid, key)
        self.children[key] = record
        if record.owner_uid:
            self.by_owner.setdefault(record.owner_uid, set()).add(key)

    def _drop(self, key: Key) -> None:
        old = self.children.pop(key, None)
        if old is not None and old.owner_uid:
            self._unindex(old.owner_uid, key)

    def _unindex(self, owner_uid: str, key: Key) -> None:
        keys = self.by_owner.get(owner_uid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_owner[owner_uid]


_CR_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp", "labels")


@dataclass(frozen=True, slots=True)
class CrEntry:
    """One CR as the cache keeps it: its identity, and the rest (metadata that reconciling reads,
    spec, status) as compressed JSON — ~1 kB instead of ~18 kB of Python objects for a CR whose
    spec the API server filled with defaults. Without ``managedFields`` and annotations (kubectl's
    last-applied copy of the whole object). Unpacking it costs tens of microseconds, once per
    reconcile."""

    uid: str
    resource_version: str
    blob: bytes

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CrEntry:
        meta = body.get("metadata") or {}
        slim = {
            "apiVersion": body.get("apiVersion") or api.API_VERSION,
            "kind": body.get("kind") or api.KIND,
            "metadata": {k: meta[k] for k in _CR_METADATA if k in meta},
            "spec": body.get("spec") or {},
            "status": body.get("status") or {},
        }
        blob = zlib.compress(json.dumps(slim, separators=(",", ":"), default=str).encode(), 1)
        return cls(uid=str(meta.get("uid") or ""), resource_version=str(meta.get("resourceVersion") or ""), blob=blob)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(zlib.decompress(self.blob))
        return body
