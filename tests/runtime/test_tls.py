"""TLS: real handshakes against the runtime's server context (versions, ciphers, mTLS, reload)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from autoglm_runtime.tls import ReloadingTLS, TLSConfigError, build_server_context

from .certs import Issued, TestCA


@contextlib.contextmanager
def tls_server(ctx: ssl.SSLContext) -> Iterator[int]:
    """An asyncio TLS server in a thread that answers b"ok" on every accepted connection."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()

    async def start() -> asyncio.Server:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def client_context(
    ca: Path | None,
    version: ssl.TLSVersion | None = None,
    client: Issued | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(ca)
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers(
                "DEFAULT:@SECLEVEL=0"
            )  # let the *client* offer legacy TLS; the server must refuse
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def fetch(port: int, ctx: ssl.SSLContext) -> tuple[bytes, str, int]:
    """Connect, read the greeting; returns (data, TLS version, server certificate serial)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        data = tls.recv(16)
        if not data:
            raise ConnectionError("server closed the connection")
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return data, str(tls.version()), x509.load_der_x509_certificate(der).serial_number


HANDSHAKE_FAILED = (ssl.SSLError, ConnectionError, OSError)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCA(folder)
    rogue = TestCA(folder, "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "rogue_client": rogue.issue("rogue-client", server=False),
    }


def test_context_is_tls12_plus_with_aead_ciphers(pki: dict) -> None:
    server: Issued = pki["server"]
    ctx = build_server_context(server.cert, server.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12), [c["name"] for c in tls12]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_legacy_tls_is_refused(pki: dict, version: ssl.TLSVersion) -> None:
    server: Issued = pki["server"]
    # Control: a permissive server proves this client can really speak the legacy version here,
    # so the refusal below is the runtime's doing and not the local OpenSSL's.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(server.cert, server.key)
    with tls_server(permissive) as port:
        try:
            _, negotiated, _ = fetch(port, client_context(None, version))
        except HANDSHAKE_FAILED as exc:
            pytest.skip(f"this OpenSSL build cannot speak {version.name} at all ({exc})")
        assert negotiated == version.name.replace("_", ".")

    with tls_server(build_server_context(server.cert, server.key)) as port, pytest.raises(HANDSHAKE_FAILED):
        fetch(port, client_context(None, version))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_modern_tls_is_accepted_and_verifies_against_the_ca(pki: dict, version: ssl.TLSVersion) -> None:
    server: Issued = pki["server"]
    with tls_server(build_server_context(server.cert, server.key)) as port:
        data, negotiated, serial = fetch(port, client_context(pki["ca"].cert_file, version))
    assert data == b"ok"
    assert negotiated == version.name.replace("_", ".")
    assert serial == server.serial


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mtls_requires_a_client_certificate_from_the_ca(pki: dict, version: ssl.TLSVersion) -> None:
    server: Issued = pki["server"]
    ca: TestCA = pki["ca"]
    ctx = build_server_context(server.cert, server.key, ca.cert_file)
    with tls_server(ctx) as port:
        assert fetch(port, client_context(ca.cert_file, version, pki["client"]))[0] == b"ok"
        with pytest.raises(HANDSHAKE_FAILED):
            fetch(port, client_context(ca.cert_file, version))  # no certificate
        with pytest.raises(HANDSHAKE_FAILED):
            fetch(port, client_context(ca.cert_file, version, pki["rogue_client"]))  # wrong CA


def _install(src: Issued, cert: Path, key: Path) -> None:
    # Like the kubelet: write new files, then swap them in with renames.
    for s, d in ((src.cert, cert), (src.key, key)):
        tmp = d.with_suffix(".new")
        tmp.write_bytes(s.read_bytes())
        os.replace(tmp, d)


def test_certificate_reload_without_restart(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    first, second = ca.issue("first", server=True), ca.issue("second", server=True)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _install(first, cert, key)
    tls = ReloadingTLS(cert, key, check_interval_s=0)
    client = client_context(ca.cert_file)
    with tls_server(tls.front) as port:
        assert fetch(port, client)[2] == first.serial
        _install(second, cert, key)
        assert fetch(port, client)[2] == second.serial
        assert fetch(port, client)[2] == second.serial
    assert tls.reloads == 1


def test_client_ca_reload_switches_trust(tmp_path: Path) -> None:
    old_ca, new_ca = TestCA(tmp_path / "old", "old-ca"), TestCA(tmp_path / "new", "new-ca")
    server = old_ca.issue("server", server=True)
    old_client, new_client = (
        old_ca.issue("old-client", server=False),
        new_ca.issue("new-client", server=False),
    )
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(old_ca.cert_file.read_bytes())
    tls = ReloadingTLS(server.cert, server.key, ca_file, check_interval_s=0)
    with tls_server(tls.front) as port:
        assert fetch(port, client_context(old_ca.cert_file, client=old_client))[0] == b"ok"
        with pytest.raises(HANDSHAKE_FAILED):
            fetch(port, client_context(old_ca.cert_file, client=new_client))
        tmp = ca_file.with_suffix(".new")
        tmp.write_bytes(new_ca.cert_file.read_bytes())
        os.replace(tmp, ca_file)
        assert fetch(port, client_context(old_ca.cert_file, client=new_client))[0] == b"ok"
        with pytest.raises(HANDSHAKE_FAILED):
            fetch(port, client_context(old_ca.cert_file, client=old_client))


def test_broken_reload_keeps_serving_the_old_pair(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCA(tmp_path / "pki")
    first, other = ca.issue("first", server=True), ca.issue("other", server=True)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _install(first, cert, key)
    tls = ReloadingTLS(cert, key, check_interval_s=0)
    # Half a rotation: the new certificate is there, its key is not (the old key does not match it).
    cert.write_bytes(other.cert.read_bytes())
    with caplog.at_level(logging.WARNING), tls_server(tls.front) as port:
        assert fetch(port, client_context(ca.cert_file))[2] == first.serial
    assert "TLS reload failed" in caplog.text
    assert tls.reloads == 0


def test_unusable_files_are_clear_errors(tmp_path: Path, pki: dict) -> None:
    server: Issued = pki["server"]
    with pytest.raises(TLSConfigError, match=r"tls_cert_file .*missing.crt: file not found"):
        build_server_context(tmp_path / "missing.crt", server.key)
    with pytest.raises(TLSConfigError, match="tls_key_file"):
        build_server_context(server.cert, tmp_path / "missing.key")
    with pytest.raises(TLSConfigError, match="key belongs to the certificate"):
        build_server_context(server.cert, pki["client"].key)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="tls_client_ca_file"):
        build_server_context(server.cert, server.key, garbage)


@pytest.mark.slow
def test_uvicorn_serves_https_with_our_context(pki: dict) -> None:
    """The integration point: uvicorn's ``ssl_context_factory`` serves our reloading context."""
    import httpx
    import uvicorn

    async def app(scope, receive, send):  # minimal ASGI app
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"hello"})

    server: Issued = pki["server"]
    tls = ReloadingTLS(server.cert, server.key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, ssl_context_factory=tls.uvicorn_factory(), log_level="warning", lifespan="off"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if srv.started:
                break
            threading.Event().wait(0.05)
        r = httpx.get(f"https://127.0.0.1:{port}/", verify=client_context(pki["ca"].cert_file))
        assert r.status_code == 200
        assert r.text == "hello"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/", verify=True)  # not in the system trust store
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
