"""The operator's own API client (kube.py): where its credentials come from, a rotated token, and
that the operator's code never needs the official ``kubernetes`` client (kopf imports that one
whenever it is installed: ~37 MiB resident)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from autoglm_operator import kube
from autoglm_operator.kube import KINDS, Kube, KubeApiError, load_configuration
from tests.conftest import REPO


@pytest.fixture
def no_service_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def _kubeconfig(path: Path, user: dict[str, object], server: str = "https://127.0.0.1:6443") -> Path:
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {"name": "k", "cluster": {"server": server, "certificate-authority": "pki/ca.crt"}}
                ],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ns"}}],
            }
        )
    )
    return path


def test_in_cluster_follows_client_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The pod's service account: the server from the service environment (IPv6 bracketed), its
    token, CA and namespace; it wins over a kubeconfig."""
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text("pem")
    (tmp_path / "namespace").write_text("autoglm-system")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", {"token": "other"})))
    info = load_configuration()
    assert (info.server, info.token, info.default_namespace) == (
        "https://10.96.0.1:443",
        "sa-token",
        "autoglm-system",
    )
    assert info.ca_path == str(tmp_path / "ca.crt")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert load_configuration().server == "https://[fd00::1]:443"


def test_kubeconfig_paths_resolve_against_its_folder(
    no_service_account: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As kubectl does: a relative certificate path is relative to the kubeconfig, not to the cwd."""
    user = {"client-certificate": "pki/admin.crt", "client-key": "/abs/admin.key"}
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", user)))
    monkeypatch.chdir("/")
    info = load_configuration()
    assert info.ca_path == str(tmp_path / "pki" / "ca.crt")
    assert info.certificate_path == str(tmp_path / "pki" / "admin.crt")
    assert info.private_key_path == "/abs/admin.key"
    assert info.default_namespace == "ns"


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("missing", "No in-cluster service account"),
        ("exec", "exec and auth-provider plugins are not run"),
        ("unreadable", "Unusable kubeconfig"),
        ("no-context", "Unusable kubeconfig"),
    ],
)
def test_unusable_credentials_are_named(
    no_service_account: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setup: str, says: str
) -> None:
    path = tmp_path / "kubeconfig"
    if setup == "missing":
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
    elif setup == "exec":
        _kubeconfig(path, {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}})
        monkeypatch.setenv("KUBECONFIG", str(path))
    elif setup == "unreadable":
        path.write_text("clusters: [")
        monkeypatch.setenv("KUBECONFIG", str(path))
    else:
        _kubeconfig(path, {"token": "t"})
        path.write_text(path.read_text().replace('"current-context": "c"', '"current-context": "gone"'))
        monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(kopf.LoginError, match=says):
        load_configuration()


class _Api(http.server.BaseHTTPRequestHandler):
    """Answers GETs for the token it is told to accept, 401 otherwise; records what it saw."""

    accept = "new"
    seen: list[tuple[str, str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        auth = self.headers.get("Authorization", "")
        self.seen.append((self.path, auth, self.headers.get("User-Agent", "")))
        ok = auth == f"Bearer {self.accept}"
        body = (
            {"kind": "ConfigMap", "metadata": {"name": "x"}}
            if ok
            else {"kind": "Status", "message": "Unauthorized"}
        )
        data = json.dumps(body).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    _Api.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_rotated_token_is_loaded_again_after_a_401(
    no_service_account: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_server: str
) -> None:
    path = _kubeconfig(tmp_path / "kubeconfig", {"token": "old"}, server=api_server)
    monkeypatch.setenv("KUBECONFIG", str(path))
    client = Kube(user_agent="autoglm-test")
    _kubeconfig(path, {"token": "new"}, server=api_server)  # the token rotates under the client
    assert client.get(KINDS["ConfigMap"], "ns", "x") == {"kind": "ConfigMap", "metadata": {"name": "x"}}
    assert [auth for _, auth, _ in _Api.seen] == ["Bearer old", "Bearer new"]
    assert {agent for _, _, agent in _Api.seen} == {"autoglm-test"}
    assert _Api.seen[0][0] == "/api/v1/namespaces/ns/configmaps/x"
    raw = client.raw("/metrics")  # what benchmarks read: not JSON objects, status unchecked
    assert (raw.status, _Api.seen[-1][:2]) == (200, ("/metrics", "Bearer new"))
    # Credentials given as such are not replaced: the 401 is the caller's answer, named.
    fixed = Kube(kopf.ConnectionInfo(server=api_server, token="wrong"))
    with pytest.raises(KubeApiError, match="401 Unauthorized") as e:
        fixed.get(KINDS["ConfigMap"], "ns", "x")
    assert not e.value.transient
    client.close()
    fixed.close()


def test_no_answer_is_a_transient_error(no_service_account: None) -> None:
    with pytest.raises(KubeApiError, match="no answer") as e:
        Kube(kopf.ConnectionInfo(server="http://127.0.0.1:9"), timeout=2).get(KINDS["ConfigMap"], "ns", "x")
    assert e.value.transient


def test_the_operator_never_imports_the_official_client() -> None:
    """Every operator module imports, and its client calls an API server, with ``kubernetes``
    unimportable (as in the operator image, whose extra does not install it)."""
    code = (
        "import sys, pkgutil, importlib; sys.modules['kubernetes'] = None\n"
        "import autoglm_operator\n"
        "for m in pkgutil.walk_packages(autoglm_operator.__path__, 'autoglm_operator.'):\n"
        "    importlib.import_module(m.name)\n"
        "import kopf; from autoglm_operator.kube import Kube, KINDS, KubeApiError\n"
        "try: Kube(kopf.ConnectionInfo(server='http://127.0.0.1:9'), timeout=1).get(KINDS['Node'], None, 'n')\n"
        "except KubeApiError as e: assert e.transient\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
    extra = (REPO / "pyproject.toml").read_text().split("operator = [", 1)[1].split("]", 1)[0]
    assert '"kubernetes' not in extra, "the operator extra must not install the official client"
