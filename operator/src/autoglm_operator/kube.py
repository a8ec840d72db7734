"""A thin, typed layer over the official ``kubernetes`` client for the few calls the operator makes.

Why not the generated per-kind APIs: the operator handles objects as plain dicts (what ``render``
produces), and server-side apply is one PATCH with ``application/apply-patch+yaml`` whatever the kind.
Why not ``kubernetes.dynamic``: it runs API discovery first; the operator knows the handful of kinds
it creates, so a static table keeps every reconcile to the requests it really needs.

Every failure becomes :class:`KubeApiError`, which says whether retrying can help (``transient``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from autoglm_operator import api, metrics

FIELD_MANAGER = "autoglm-operator"
USER_AGENT = "autoglm-operator"


def default_user_agent() -> str:
    """``autoglm-operator (POD)``: audit logs (and the tests) tell the replicas' writes apart."""
    pod = os.environ.get("POD_ID", "").strip()
    return f"{USER_AGENT} ({pod})" if pod else USER_AGENT


Query = list[tuple[str, str]]  # a module-level alias: inside Kube, ``list`` is the method

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

# Statuses where a retry may succeed: conflicts, throttling, server and gateway errors.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "Service", "services"),
        Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Kind("v1", "Node", "nodes", namespaced=False),
        Kind("v1", "Namespace", "namespaces", namespaced=False),
        Kind("v1", "Event", "events"),
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
        Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
        # spec.routing: the endpoint picker's identity and RBAC, the pool, the route
        Kind("v1", "ServiceAccount", "serviceaccounts"),
        Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
        Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
        Kind("inference.networking.k8s.io/v1", "InferencePool", "inferencepools"),
        Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
        Kind(api.API_VERSION, api.KIND, api.PLURAL),
    )
}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    try:
        return KINDS[obj["kind"]]
    except KeyError:
        raise ValueError(f"the operator does not know the kind {obj.get('kind')!r}") from None


class KubeApiError(Exception):
    """A failed API call; ``status`` 0 means no HTTP answer (connection, timeout)."""

    def __init__(self, status: int, reason: str, message: str, *, verb: str = "", what: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.verb = verb
        self.what = what
        super().__init__(f"{verb} {what}: {status or 'no answer'} {reason}: {message}".strip())

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status in TRANSIENT_STATUSES

    @property
    def not_found(self) -> bool:
        return self.status == 404


def load_configuration() -> k8s_client.Configuration:
    """In-cluster service account first, then the kubeconfig (``$KUBECONFIG`` read now, not at import)."""
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
    except ConfigException:
        k8s_config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg
        )
    return cfg


def bearer_token(cfg: k8s_client.Configuration) -> tuple[str | None, str | None]:
    """(scheme, token) of the configuration's Authorization header, as kopf's login wants them."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0] if parts else None


class Kube:
    """The operator's API calls (synchronous; the kopf handlers run them in a worker thread)."""

    def __init__(
        self,
        configuration: k8s_client.Configuration | None = None,
        *,
        user_agent: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._client = k8s_client.ApiClient(configuration or load_configuration())
        self._client.user_agent = user_agent or default_user_agent()
        self._timeout = timeout

    def close(self) -> None:
        self._client.close()

    # -- the calls ----------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self._call(
                "GET", kind.path(namespace, name), what=f"{kind.kind} {namespace}/{name}", resource=kind.plural
            )
        except KubeApiError as e:
            if e.not_found:
                return None
            raise

    def list(
        self, kind: Kind, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._call(
            "GET", kind.path(namespace), query=query, what=f"{kind.plural} in {namespace or '*'}",
            resource=kind.plural,
            listing=True,
        )
        items = result.get("items") or []
        for item in items:  # list items carry no apiVersion/kind; callers like whole objects
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind = kind_of(obj)
        namespace = obj.get("metadata", {}).get("namespace")
        return self._call(
            "POST", kind.path(namespace), body=dict(obj), what=f"{kind.kind} {namespace}", resource=kind.plural
        )

    def apply(
        self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply: the object becomes what ``obj`` says for the fields this manager owns."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        query = [("fieldManager", field_manager)] + ([("force", "true")] if force else [])
        return self._call(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            body=dict(obj),
            query=query,
            content_type=APPLY,
            what=f"{kind.kind} {meta.get('namespace')}/{meta['name']}",
            resource=kind.plural,
        )

    def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386): None deletes a key, lists are replaced whole."""
        return self._call(
            "PATCH",
            kind.path(namespace, name, subresource),
            body=dict(patch),
            content_type=MERGE,
            what=f"{kind.kind} {namespace}/{name}" + (f"/{subresource}" if subresource else ""),
            resource=kind.plural + (f"/{subresource}" if subresource else ""),
        )

    def delete(self, kind: Kind, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        """Delete (background propagation); False when it was already gone.

        With ``uid`` the delete only hits that incarnation of the object (a precondition).
        """
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call(
                "DELETE",
                kind.path(namespace, name),
                body=body,
                what=f"{kind.kind} {namespace}/{name}",
                resource=kind.plural,
            )
        except KubeApiError as e:
            if e.not_found:
                return False
            raise
        return True

    # -- plumbing -----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Query | None = None,
        content_type: str = "application/json",
        what: str = "",
        resource: str = "",
        listing: bool = False,
    ) -> dict[str, Any]:
        verb = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(method, method)
        metrics.API_REQUESTS.labels(verb="LIST" if listing else method, resource=resource).inc()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            request = self._client.param_serialize(
                method,
                path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(*request, _request_timeout=self._timeout)
            data = response.read()
        except ApiException as e:
            raise _api_error(e.status or 0, e.reason or "", e.body, verb=verb, what=what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeApiError(0, type(e).__name__, str(e), verb=verb, what=what) from e
        if not 200 <= response.status <= 299:
            raise _api_error(response.status, response.reason or "", data, verb=verb, what=what)
        return json.loads(data) if data else {}


def _api_error(status: int, reason: str, body: Any, *, verb: str, what: str) -> KubeApiError:
    """Take the Kubernetes Status message when the body has one."""
    message = ""
    if body:
        try:
            payload = json.loads(body)
            message = payload.get("message") or ""
            reason = payload.get("reason") or reason
        except (ValueError, AttributeError, TypeError):
            message = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return KubeApiError(status, reason, message[:500], verb=verb, what=what)
