"""A real HTTP server that answers like the Hugging Face hub, for one tiny repo, with injectable faults.

Endpoints (what ``HfApi.model_info(files_metadata=True)`` and a resolve download call):

- ``GET /api/models/{repo}[/revision/{rev}]?blobs=true`` → id, sha, siblings with size, blobId, lfs.sha256
- ``GET|HEAD /{repo}/resolve/{rev}/{file}`` → the bytes, with ``Range`` (206 + Content-Range), ``ETag``,
  ``X-Repo-Commit``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS files, and the hub's ``X-Error-Code`` on
  401/403/404; optionally a 302 to another server (the CDN) for LFS files, as the hub does
- ``GET /cdn/{sha256}`` → LFS content by digest (the CDN side of the redirect)

Auth: ``valid_tokens`` (None = anonymous ok), ``gated_denied`` tokens get 403 GatedRepo, others 401.
Faults (``Fault``) match a request path substring and apply ``times`` times (-1 = always).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pth", ".png")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Fault:
    """``kind``: status | reset | slow | truncate | stall | corrupt | hold (wait for ``release``)."""

    kind: str
    match: str
    times: int = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    fraction: float = 0.5
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float
    server: str


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Resets and clients hanging up mid-body are what the tests inject; no tracebacks for them."""


class HubServer:
    def __init__(
        self,
        files: dict[str, bytes],
        repo_id: str = "acme/tiny",
        commit: str = "0123456789abcdef0123456789abcdef01234567",
        prefix: str = "",
        name: str = "hub",
    ) -> None:
        self.files = dict(files)
        self.repo_id = repo_id
        self.commit = commit
        self.revisions = {"main", commit}
        self.prefix = prefix.rstrip("/")
        self.name = name
        self.faults: list[Fault] = []
        self.requests: list[Seen] = []
        self.valid_tokens: set[str] | None = None
        self.gated_denied: set[str] = set()
        self.listed_sha256: dict[str, str] = {}
        self.lfs_metadata = True  # False: a mirror whose file list lacks lfs info
        self.redirect_lfs_to: HubServer | None = None
        self.chunk_delay = 0.0
        self.chunk_size = 64 * 1024
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        port = self._httpd.server_address[1]
        return f"http://127.0.0.1:{port}{self.prefix}"

    @property
    def source(self) -> str:
        """The mirror-style source: base URL + repo id."""
        return f"{self.base}/{self.repo_id}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- what tests look at -----------------------------------------------------------------------
    def downloads(self, name: str) -> list[Seen]:
        """GETs of one file (resolve on the hub, or its digest on the CDN)."""
        key = f"/resolve/{self.commit}/{name}"
        keys = (key, f"/cdn/{self.sha256(name)}")
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(keys)]

    def api_calls(self) -> list[Seen]:
        return [r for r in self.requests if "/api/models/" in r.path]

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.match in path and fault.times != 0:
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def sibling(self, name: str) -> dict[str, object]:
        data = self.files[name]
        doc: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
        if self.is_lfs(name) and self.lfs_metadata:
            sha = self.listed_sha256.get(name, self.sha256(name))
            doc["lfs"] = {"sha256": sha, "size": len(data), "pointerSize": 134}
            doc["blobId"] = git_blob_id(
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\n".encode()
            )
        return doc

    # --- the handler ------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            # -- helpers
            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(
                self, status: int, code: str = "", message: str = "", extra: dict[str, str] | None = None
            ):
                headers = {"Content-Type": "application/json", **(extra or {})}
                if code:
                    headers["X-Error-Code"] = code
                if message:
                    headers["X-Error-Message"] = message
                self._send(status, json.dumps({"error": message or code or str(status)}).encode(), headers)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _auth_error(self) -> bool:
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
                if token in hub.gated_denied:
                    self._error(403, "GatedRepo", "Access to model acme/tiny is restricted.")
                    return True
                if hub.valid_tokens is None:
                    return False
                if token is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                    return True
                if token not in hub.valid_tokens:
                    self._error(401, "", "Invalid credentials in Authorization header")
                    return True
                return False

            def _serve(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                with hub._lock:
                    seen = {k.lower(): v for k, v in self.headers.items()}
                    hub.requests.append(Seen(self.command, path, seen, time.monotonic(), hub.name))
                fault = hub.take_fault(path)
                if fault is not None:
                    if fault.kind == "status":
                        self._error(fault.status, fault.headers.pop("X-Error-Code", ""), extra=fault.headers)
                        return
                    if fault.kind == "reset":
                        self._reset()
                        return
                    if fault.kind == "slow":
                        time.sleep(fault.delay)
                    if fault.kind == "hold":
                        fault.release.wait(60)
                if hub.prefix:
                    if not path.startswith(hub.prefix + "/"):
                        self._error(404, message="not under the mirror prefix")
                        return
                    path = path[len(hub.prefix) :]
                if path.startswith("/cdn/"):
                    digest = path.removeprefix("/cdn/")
                    names = [n for n in hub.files if hub.sha256(n) == digest]
                    if not names:
                        self._error(404)
                        return
                    self._content(names[0], fault, {})
                    return
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/(.+))?$", path)
                if m:
                    self._api(m.group(1), m.group(2) or "main")
                    return
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m:
                    self._resolve(m.group(1), m.group(2), m.group(3), fault)
                    return
                self._error(404, message="no such endpoint")

            def _api(self, repo: str, revision: str) -> None:
                if repo != hub.repo_id:
                    self._error(404, "RepoNotFound", "Repository not found")
                    return
                if self._auth_error():
                    return
                if revision not in hub.revisions:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return
                doc = {
                    "_id": "0" * 24,
                    "id": hub.repo_id,
                    "modelId": hub.repo_id,
                    "sha": hub.commit,
                    "private": hub.valid_tokens is not None,
                    "gated": bool(hub.gated_denied) and "manual",
                    "disabled": False,
                    "tags": [],
                    "siblings": [hub.sibling(n) for n in sorted(hub.files)],
                }
                self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

            def _resolve(self, repo: str, revision: str, name: str, fault: Fault | None) -> None:
                if repo != hub.repo_id:
                    self._error(404, "RepoNotFound", "Repository not found")
                    return
                if self._auth_error():
                    return
                if revision not in hub.revisions:
                    self._error(404, "RevisionNotFound", "Invalid rev id")
                    return
                if name not in hub.files:
                    self._error(404, "EntryNotFound", "Entry not found")
                    return
                headers = {"X-Repo-Commit": hub.commit}
                if hub.is_lfs(name):
                    headers["X-Linked-Etag"] = f'"{hub.sha256(name)}"'
                    headers["X-Linked-Size"] = str(len(hub.files[name]))
                    headers["ETag"] = f'"{hub.sha256(name)}"'
                    if hub.redirect_lfs_to is not None:
                        headers["Location"] = f"{hub.redirect_lfs_to.base}/cdn/{hub.sha256(name)}"
                        self._send(302, b"", headers)
                        return
                else:
                    headers["ETag"] = f'"{git_blob_id(hub.files[name])}"'
                self._content(name, fault, headers)

            def _content(self, name: str, fault: Fault | None, headers: dict[str, str]) -> None:
                data = hub.files[name]
                if fault is not None and fault.kind == "corrupt":
                    data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng:
                    m = re.match(r"^bytes=(\d+)-(\d*)$", rng)
                    if not m or int(m.group(1)) >= len(data):
                        self._error(416, extra={"Content-Range": f"bytes */{len(data)}"})
                        return
                    start, status = int(m.group(1)), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                self.send_response(status)
                for k, v in {
                    **headers,
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                cut = len(body)
                if fault is not None and fault.kind in ("truncate", "stall"):
                    cut = int(len(body) * fault.fraction)
                sent = 0
                while sent < cut:
                    piece = body[sent : min(cut, sent + hub.chunk_size)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    sent += len(piece)
                    if hub.chunk_delay:
                        time.sleep(hub.chunk_delay)
                if cut < len(body):
                    if fault is not None and fault.kind == "stall":
                        time.sleep(fault.delay)
                    self._reset()

        return Handler
