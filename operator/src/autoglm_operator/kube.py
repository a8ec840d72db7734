"""A thin, typed client for the few calls the operator makes: urllib3 and kopf's credentials.

Why not the official ``kubernetes`` client: the operator handles objects as plain dicts (what
``render`` produces), and server-side apply is one PATCH with ``application/apply-patch+yaml``
whatever the kind, so its generated per-kind APIs buy nothing, and importing it costs ~11 MiB of
resident memory (measured: the operator's modules import in 59 MiB without it, 70 MiB with it) in
a process whose whole budget is 150 MiB at 1,000 CRs. Kopf imports it too whenever it is
installed, so the operator's extra does not install it.
Why not ``kubernetes.dynamic``: it runs API discovery first; the operator knows the handful of kinds
it creates, so a static table keeps every reconcile to the requests it really needs.

Credentials are kopf's :class:`kopf.ConnectionInfo`, so the operator's calls and kopf's watches
log in the same way: the pod's service account (client-go's in-cluster rules), else the kubeconfig.

Every failure becomes :class:`KubeApiError`, which says whether retrying can help (``transient``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import kopf
import urllib3
import yaml

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


SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_PATH_FIELDS = ("ca_path", "certificate_path", "private_key_path")


def load_configuration() -> kopf.ConnectionInfo:
    """In-cluster service account first, then the kubeconfig (``$KUBECONFIG`` read now, not at import).

    Raises :class:`kopf.LoginError` naming what is missing or unusable.
    """
    return _in_cluster() or _from_kubeconfig()


def _in_cluster() -> kopf.ConnectionInfo | None:
    """client-go's in-cluster rules: the API server from the service's environment, the pod's token."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT_DIR / "token"
    if not (host and port and token.is_file()):
        return None
    ca, namespace = SERVICE_ACCOUNT_DIR / "ca.crt", SERVICE_ACCOUNT_DIR / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=str(ca) if ca.is_file() else None,
        token=token.read_text().strip() or None,  # re-read at each login: projected tokens rotate
        default_namespace=namespace.read_text().strip() if namespace.is_file() else None,
    )


def _from_kubeconfig() -> kopf.ConnectionInfo:
    """Kopf's kubeconfig reader, with file paths resolved against the kubeconfig's folder (as kubectl)."""
    try:
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as e:  # no file, no context
        raise kopf.LoginError(f"Unusable kubeconfig ({os.environ.get('KUBECONFIG') or '~/.kube/config'}): "
                              f"{type(e).__name__}: {e}") from e  # fmt: skip
    if info is None:
        raise kopf.LoginError(
            "No in-cluster service account ($KUBERNETES_SERVICE_HOST and "
            f"{SERVICE_ACCOUNT_DIR}/token) and no kubeconfig ($KUBECONFIG or ~/.kube/config)"
        )
    if not (info.token or info.certificate_path or info.certificate_data or info.username):
        raise kopf.LoginError(
            "The kubeconfig's current user has no token, client certificate or password; exec and "
            "auth-provider plugins are not run by the operator (use a token, e.g. `kubectl create token`)"
        )
    files = [
        p.strip() for p in (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep) if p.strip()
    ]
    base = Path(files[0]).expanduser().parent
    relative: dict[str, Any] = {
        field: str(base / value)
        for field in _PATH_FIELDS
        if isinstance(value := getattr(info, field), str) and not os.path.isabs(value)
    }
    return dataclasses.replace(info, **relative) if relative else info


def _pool(info: kopf.ConnectionInfo) -> urllib3.PoolManager:
    """Connections to ``info.server`` with its TLS (CA, client certificate, or none when insecure)."""
    tls: dict[str, Any] = {}
    if (info.server or "").startswith("https:"):
        tls["ssl_context"] = info.as_ssl_context()
        if info.insecure:
            tls.update(cert_reqs="CERT_NONE", assert_hostname=False)
    kwargs: dict[str, Any] = dict(num_pools=2, maxsize=8, **tls)
    if info.proxy_url:
        return urllib3.ProxyManager(info.proxy_url, **kwargs)
    return urllib3.PoolManager(**kwargs)


class Kube:
    """The operator's API calls (synchronous; the kopf handlers run them in a worker thread)."""

    def __init__(
        self,
        connection: kopf.ConnectionInfo | None = None,
        *,
        user_agent: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        # Given credentials are used as given; loaded ones are loaded again after a 401 (rotated token).
        self._relogin = connection is None
        self._connect(connection or load_configuration())
        self._user_agent = user_agent or default_user_agent()
        self._timeout = urllib3.Timeout(total=timeout)

    def _connect(self, info: kopf.ConnectionInfo) -> None:
        if not info.server:
            raise kopf.LoginError("The credentials name no API server")
        self._server = info.server.rstrip("/")
        self._http = _pool(info)
        self._auth = info.as_http_headers()  # Authorization (token or basic), or nothing for certificates

    def close(self) -> None:
        self._http.clear()

    # -- the calls ----------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self._call(
                "GET",
                kind.path(namespace, name),
                what=f"{kind.kind} {namespace}/{name}",
                resource=kind.plural,
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
            "GET",
            kind.path(namespace),
            query=query,
            what=f"{kind.plural} in {namespace or '*'}",
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
            "POST",
            kind.path(namespace),
            body=dict(obj),
            what=f"{kind.kind} {namespace}",
            resource=kind.plural,
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

    def raw(self, path: str, *, stream: bool = False, read_timeout: float | None = None) -> Any:
        """A GET whose answer is not one JSON object (``/metrics`` text, a watch stream when
        ``stream``): the urllib3 response, status unchecked. Benchmarks use it; the operator does not."""
        timeout = urllib3.Timeout(connect=10, read=read_timeout) if read_timeout else self._timeout
        return self._http.request("GET", self._server + path, headers={**self._auth, "User-Agent": self._user_agent},
                                  preload_content=not stream, timeout=timeout, retries=False)  # fmt: skip

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
        headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": self._user_agent}
        target = path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None  # JSON is YAML for apply

        def send() -> Any:
            try:
                return self._http.request(method, self._server + target, body=data, headers={**headers, **self._auth},
                                          timeout=self._timeout, retries=False)  # fmt: skip
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise KubeApiError(0, type(e).__name__, str(e), verb=verb, what=what) from e

        response = send()
        if response.status == 401 and self._relogin:
            self._connect(load_configuration())  # a projected token rotated under us
            response = send()
        if not 200 <= response.status <= 299:
            raise _api_error(response.status, response.reason or "", response.data, verb=verb, what=what)
        return json.loads(response.data) if response.data else {}


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
