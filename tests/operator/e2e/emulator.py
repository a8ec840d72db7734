"""An in-process Kubernetes API for the end-to-end tests: kmock's emulator plus what the operator needs.

kmock (by kopf's author) serves discovery, list, watch and get over real HTTP and keeps objects in
memory. This subclass takes over every write and adds:

- metadata stamping: ``uid``, ``creationTimestamp``, ``generation`` (bumped when anything outside
  metadata/status changes), a cluster-wide increasing ``resourceVersion`` (kopf and the operator
  rely on it), ``generateName``;
- server-side apply (``PATCH`` with ``application/apply-patch+yaml``): create when missing; else the
  fields this field manager applied last time and no longer applies are removed, and the new
  object is deep-merged (maps merged, lists replaced whole); a no-op apply changes nothing (no new
  resourceVersion, no watch event), like the real API server; ``fieldManager`` is required and
  recorded in ``metadata.managedFields`` (manager and operation only);
- JSON merge patch (strategic merge patches are treated as merge patches) and JSON patch;
- the ``status`` subresource: ``/status`` writes change only ``status``; writes to the main
  resource leave ``status`` alone;
- ``resourceVersion`` preconditions on patches and ``uid`` preconditions on deletes (409);
- finalizers: delete sets ``deletionTimestamp`` while finalizers remain; the object goes when the
  last one is removed;
- garbage collection by owner references: when an object goes, objects whose ``ownerReferences``
  name its uid go too (recursively, at once), and an object written with owner references that all
  point at objects already gone is removed right away (the real collector does that eventually);
- equality-based label selectors on list (``a=b``, ``a!=b``, ``a``, ``!a``, comma = and);
- a write counter per (client, verb, resource) — the client is told apart by User-Agent — and
  failure injection (``fail_next``) for retry tests.

What it does NOT model (a test passing here says nothing about these; the ``cluster``-marked run
against a real API server covers them):

- real server-side apply field ownership: no per-field ``managedFields``/fieldsV1, no conflicts
  between managers (``force`` is accepted and ignored), associative lists (``containers`` keyed by
  name, ``ports`` by port) are replaced whole instead of merged by key;
- strategic merge patch semantics (patch directives, list merge keys);
- defaulting, OpenAPI schema validation, pruning of unknown fields, CRD structural schemas,
  ``x-kubernetes-validations`` (CEL), immutable fields (e.g. a Deployment's selector);
- admission (webhooks, Pod Security admission, quotas, LimitRanges), RBAC (every request is allowed);
- garbage-collection semantics: no foreground/background/orphan propagation, no
  ``blockOwnerDeletion``, dependents go synchronously with the owner;
- controllers: no Deployment controller (no ReplicaSets, Pods or Deployment status — tests set
  ``status`` themselves), no HPA controller, no scheduler, no endpoints;
- watch details: no bookmarks, no ``410 Gone``, no server-side ``timeoutSeconds``, resourceVersion
  on watch only filters the replay of unchanged objects (no event history: a deletion during a
  disconnect is not replayed), field selectors;
- PUT/update of whole objects beyond a plain replace, ``dryRun``, server-side list pagination.
"""

from __future__ import annotations

import collections
import copy
import datetime
import itertools
import json
import random
import string
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts
from kmock._internal import parsing as kmock_parsing

_kmock_parse_path = kmock_parsing.parse_path


def _parse_path(path: str) -> kmock_parsing.ParsedPath:
    """kmock reads ``/api/v1/namespaces[/NAME]`` as a namespace prefix with no resource (and fails
    with a 500): they are the cluster-scoped Namespace resource, which kopf lists and watches when
    it serves ``--namespace``."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return kmock_parsing.ParsedPath(
            "", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None
        )
    return _kmock_parse_path(path)


kmock_parsing.parse_path = _parse_path

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
        },
        status=code,
    )


class _RejectError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def client_of(user_agent: str | None) -> str:
    agent = (user_agent or "").lower()
    if agent.startswith("autoglm-operator"):
        return "operator"
    if agent.startswith("kopf"):
        return "kopf"
    if agent.startswith("autoglm-e2e"):
        return "test"
    return "other"


def matches_selector(labels: Mapping[str, str], selector: str | None) -> bool:
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Leaf paths of nested dicts (lists count as leaves: they are replaced whole)."""
    if isinstance(value, Mapping) and value:
        out: set[tuple[str, ...]] = set()
        for key, sub in value.items():
            out |= _paths(sub, (*prefix, key))
        return out
    return {prefix}


def _remove_path(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = obj
    parents = []
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, key in reversed(parents):  # drop maps the removal left empty
        if parent[key] == {}:
            del parent[key]


def _deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@attrs.define(kw_only=True)
class ApiEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with stamping, SSA, subresources, GC, selectors and a write counter."""

    writes: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    # The same writes keyed by the whole User-Agent: the operator's replicas send `autoglm-operator (POD)`.
    writes_by_agent: collections.Counter[tuple[str, str, str]] = attrs.field(
        factory=collections.Counter, init=False
    )
    # Reads (get, list, watch) the same way: a real API server pays for each, the emulator does not.
    reads: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    selectors: dict[str, set[str]] = attrs.field(factory=dict, init=False)  # label selectors of the operator's lists/watches
    fail_next: dict[tuple[str, str], list[int]] = attrs.field(factory=dict, init=False)
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _applied: dict[tuple[Any, str | None, str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)

    # -- reads ------------------------------------------------------------------------------

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            payload["items"] = [
                item
                for item in payload["items"]
                if matches_selector((item.get("metadata") or {}).get("labels") or {}, selector)
            ]
        payload["metadata"] = {"resourceVersion": str(self._current_version())}
        return payload

    async def _serve_watch(self, request: kmock.Request) -> Any:
        selector = request.params.get("labelSelector")
        async for event in self._serve_watch_since(request):
            if selector and isinstance(event, dict) and isinstance(event.get("object"), dict):
                labels = (event["object"].get("metadata") or {}).get("labels") or {}
                if not matches_selector(labels, selector):
                    continue  # the API server sends only what the watch's selector matches
            yield event

    async def _serve_watch_since(self, request: kmock.Request) -> Any:
        # Like the API server, a watch from a resourceVersion does not replay objects unchanged
        # since then (kmock re-sends every object as ADDED). kopf resumes its watches from the last
        # version it saw after each disconnect (every ~70 s when idle); replaying thousands of
        # objects there is an emulator artifact that distorts memory and CPU measurements.
        since = request.params.get("resourceVersion") or ""
        since_v = int(since) if since.isdigit() else 0
        async for event in super()._serve_watch(request):
            if since_v and isinstance(event, dict) and event.get("type") == "ADDED":
                rv = str(((event.get("object") or {}).get("metadata") or {}).get("resourceVersion") or "")
                if rv.isdigit() and int(rv) <= since_v:
                    continue
            yield event

    def _current_version(self) -> int:
        best = 0
        for _, obj in self._objects.items():
            if not obj.deleted:
                best = max(best, int(obj.raw.get("metadata", {}).get("resourceVersion", 0) or 0))
        return best

    # -- writes -----------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        if request.resource is not None and request.resource.plural and method == "GET":
            watching = str(request.params.get("watch", "")).lower() in ("true", "1")
            verb = "watch" if watching else ("get" if request.name else "list")
            target = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            self.reads[(client_of(request.headers.get("User-Agent")), verb, target)] += 1
            if verb in ("watch", "list") and client_of(request.headers.get("User-Agent")) != "test":
                self.selectors.setdefault(target, set()).add(request.params.get("labelSelector") or "")
        if request.resource is None or method not in ("POST", "PATCH", "PUT", "DELETE"):
            return await super()._handle(request)
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        verb = {
            "POST": "create",
            "PUT": "update",
            "DELETE": "delete",
            "PATCH": "apply" if content_type == APPLY else "patch",
        }[method]
        target = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        self.writes[(client_of(request.headers.get("User-Agent")), verb, target)] += 1
        self.writes_by_agent[(request.headers.get("User-Agent") or "", verb, target)] += 1
        planned = self.fail_next.get((verb, target))
        if planned:
            code = planned.pop(0)
            return _status(code, "InjectedFailure", f"injected {code} for {verb} {target}")
        try:
            async with self._lock:
                code, body, events = self._write(request, method, content_type)
                if code in (200, 201) and method != "DELETE":
                    self._collect_orphan(request.resource, events)
        except _RejectError as e:
            return _status(e.code, e.reason, e.message)
        for resource, event in events:
            await self._buses[resource].put(event)
        return aiohttp.web.json_response(body, status=code)

    def _write(self, request: kmock.Request, method: str, content_type: str) -> tuple[int, Any, list]:
        resource = request.resource
        # Not .get(): kmock's resource table is a defaultdict and would register an unknown resource.
        info = self._resources[resource] if resource in self._resources else None  # noqa: SIM401
        has_status = info is not None and "status" in info.subresources
        data = request.data
        if method == "PATCH" and content_type == APPLY and not isinstance(data, Mapping):
            data = yaml.safe_load(request.text)
        body_namespace = (
            ((data.get("metadata") or {}).get("namespace")) if isinstance(data, Mapping) else None
        )
        namespace = request.namespace or body_namespace
        if resource not in self._get_resources():
            raise _RejectError(
                404, "NotFound", f"the server could not find the requested resource ({resource.plural})"
            )

        if method == "POST":
            obj = copy.deepcopy(dict(data or {}))
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(
                    random.choices(string.ascii_lowercase + string.digits, k=5)
                )
            name = meta.get("name")
            if not name:
                raise _RejectError(422, "Invalid", "metadata.name: Required value")
            if self._live(resource, namespace, name) is not None:
                raise _RejectError(409, "AlreadyExists", f"{resource.plural} {name!r} already exists")
            if has_status:
                obj.pop("status", None)
            self._stamp_new(obj, namespace)
            self._store(resource, namespace, name, obj)
            return 201, obj, [(resource, {"type": "ADDED", "object": copy.deepcopy(obj)})]

        name = request.name
        current = self._live(resource, namespace, name)

        if method == "DELETE":
            if current is None:
                raise _RejectError(404, "NotFound", f"{resource.plural} {name!r} not found")
            uid = ((data or {}).get("preconditions") or {}).get("uid") if isinstance(data, Mapping) else None
            if uid and uid != current["metadata"].get("uid"):
                raise _RejectError(409, "Conflict", f"uid precondition failed for {name!r}")
            events: list = []
            self._delete(resource, namespace, name, events)
            return 200, current, events

        if method == "PATCH" and content_type == APPLY:
            manager = request.params.get("fieldManager")
            if not manager:
                raise _RejectError(400, "BadRequest", "fieldManager is required for apply patch")
            applied = copy.deepcopy(dict(data or {}))
            key = (resource, namespace, name, manager)
            if current is None:
                obj = copy.deepcopy(applied)
                obj.setdefault("metadata", {})["name"] = name
                if has_status:
                    obj.pop("status", None)
                self._stamp_new(obj, namespace)
                obj["metadata"]["managedFields"] = [{"manager": manager, "operation": "Apply"}]
                self._applied[key] = applied
                self._store(resource, namespace, name, obj)
                return 201, obj, [(resource, {"type": "ADDED", "object": copy.deepcopy(obj)})]
            new = copy.deepcopy(current)
            previous = self._applied.get(key, {})
            for path in _paths(previous) - _paths(applied):
                if path and path[0] not in ("apiVersion", "kind"):
                    _remove_path(new, path)
            new = _deep_merge(new, applied)
            if has_status:
                new["status"] = copy.deepcopy(current.get("status"))
                if new["status"] is None:
                    del new["status"]
            managers = new["metadata"].setdefault("managedFields", [])
            if not any(m.get("manager") == manager for m in managers):
                managers.append({"manager": manager, "operation": "Apply"})
            self._applied[key] = applied
            return self._commit(resource, namespace, name, current, new, subresource=None)

        if current is None:
            raise _RejectError(404, "NotFound", f"{resource.plural} {name!r} not found")

        if method == "PUT":
            new = copy.deepcopy(dict(data or {}))
            self._check_version(current, new)
        elif content_type == JSON_PATCH:
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(current), list(data or []))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _RejectError(422, "Invalid", f"json patch failed: {e}") from e
        else:  # merge patch; strategic merge patches are treated the same (a gap, see the docstring)
            self._check_version(current, data or {})
            new = dict(kmock_dicts.merge_patch_dict(copy.deepcopy(current), data or {}))
        if request.subresource == "status":
            new = {**copy.deepcopy(current), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif has_status:
            new["status"] = copy.deepcopy(current.get("status"))
            if new["status"] is None:
                del new["status"]
        return self._commit(resource, namespace, name, current, new, subresource=request.subresource)

    # -- helpers ----------------------------------------------------------------------------

    def _check_version(self, current: Mapping[str, Any], incoming: Any) -> None:
        if not isinstance(incoming, Mapping):
            return
        wanted = (incoming.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"].get("resourceVersion"):
            raise _RejectError(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version",
            )

    def _stamp_new(self, obj: dict[str, Any], namespace: str | None) -> None:
        meta = obj.setdefault("metadata", {})
        if namespace:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = str(next(self._versions))

    def _live(self, resource: Any, namespace: str | None, name: str | None) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if name is None or key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _store(self, resource: Any, namespace: str | None, name: str, obj: dict[str, Any]) -> None:
        key = (resource, namespace, name)
        if key in self._objects:
            self._objects[key].history.append(copy.deepcopy(obj))
        else:
            self._objects[key] = copy.deepcopy(obj)

    def _commit(
        self,
        resource: Any,
        namespace: str | None,
        name: str,
        current: dict[str, Any],
        new: dict[str, Any],
        *,
        subresource: str | None,
    ) -> tuple[int, Any, list]:
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        meta["generation"] = current["metadata"].get("generation", 1)
        if json.dumps(new, sort_keys=True) == json.dumps(current, sort_keys=True):
            return 200, current, []  # a no-op write: no new version, no event
        if subresource is None and _spec_part(new) != _spec_part(current):
            meta["generation"] = int(meta["generation"]) + 1
        meta["resourceVersion"] = str(next(self._versions))
        events: list = []
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._store(resource, namespace, name, new)
            self._delete(resource, namespace, name, events)
            return 200, new, events
        self._store(resource, namespace, name, new)
        return 200, new, [(resource, {"type": "MODIFIED", "object": copy.deepcopy(new)})]

    def _delete(self, resource: Any, namespace: str | None, name: str, events: list) -> None:
        current = self._live(resource, namespace, name)
        if current is None:
            return
        meta = current["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = str(next(self._versions))
                self._store(resource, namespace, name, current)
                events.append((resource, {"type": "MODIFIED", "object": copy.deepcopy(current)}))
            return
        self._objects[(resource, namespace, name)].delete()
        self._applied = {k: v for k, v in self._applied.items() if k[:3] != (resource, namespace, name)}
        events.append((resource, {"type": "DELETED", "object": copy.deepcopy(current)}))
        # Emulated garbage collection: dependents of this uid go now.
        uid = meta.get("uid")
        for (res, ns, nm), obj in list(self._objects.items()):
            if obj.deleted:
                continue
            refs = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                self._delete(res, ns, nm, events)

    def _collect_orphan(self, resource: Any, events: list) -> None:
        """The garbage collector also removes an object whose owner is already gone (e.g. created by a
        controller that raced with the owner's deletion): done here at once instead of eventually."""
        for _, event in list(events):
            obj = event["object"]
            refs = (obj.get("metadata") or {}).get("ownerReferences") or []
            if refs and event["type"] != "DELETED" and not any(self._uid_exists(r.get("uid")) for r in refs):
                meta = obj["metadata"]
                self._delete(resource, meta.get("namespace"), meta["name"], events)

    def _uid_exists(self, uid: str | None) -> bool:
        return any(
            not obj.deleted and (obj.raw.get("metadata") or {}).get("uid") == uid
            for obj in self._objects.values()
        )

    # -- conveniences for tests -------------------------------------------------------------

    def objects_of(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        out = []
        for (res, ns, _), obj in self._objects.items():
            if res.plural == plural and not obj.deleted and (namespace is None or ns == namespace):
                out.append(copy.deepcopy(obj.raw))
        return out

    def reads_by(self, client: str) -> dict[tuple[str, str], int]:
        return {(verb, target): n for (who, verb, target), n in self.reads.items() if who == client and n}

    def writes_by(self, client: str) -> dict[tuple[str, str], int]:
        return {(verb, target): n for (who, verb, target), n in self.writes.items() if who == client and n}


def register_resources(emu: kmock.KubernetesEmulator, *, keda: bool = True) -> None:
    """Built-in discovery, the AutoGLMDeployment CRD (without it kopf idles silently), kopf's
    peering CRDs (as the chart installs them: no status subresource) and, unless ``keda`` is false,
    KEDA's ScaledObject CRD."""
    from autoglm_operator import api

    for plural, kind, namespaced in (
        ("clusterkopfpeerings", "ClusterKopfPeering", False),
        ("kopfpeerings", "KopfPeering", True),
    ):
        emu.resources[f"kopf.dev/v1/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        )

    emu.resources.load_bundled()
    if keda:
        emu.resources["keda.sh/v1alpha1/scaledobjects"] = kmock.ResourceInfo(
            kind="ScaledObject",
            singular="scaledobject",
            namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"},
        )
    emu.resources[f"{api.GROUP}/{api.VERSION}/{api.PLURAL}"] = kmock.ResourceInfo(
        kind=api.KIND,
        singular=api.SINGULAR,
        namespaced=True,
        shortnames=set(api.SHORT_NAMES),
        categories=set(api.CATEGORIES),
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status", "scale"},
    )


def kubeconfig_yaml(url: str) -> str:
    """A kubeconfig naming the emulator at ``url`` with a dummy token."""
    url = str(url).rstrip("/")
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: test, user: {token: dummy-token}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: test, namespace: default}}]\n"
    )
