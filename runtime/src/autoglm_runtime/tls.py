"""TLS for the runtime's HTTP server: TLS 1.2+, modern ciphers, optional mTLS, certificate reload.

How reload works (checked against uvicorn 0.54 and OpenSSL 3): uvicorn accepts
``Config(ssl_context_factory=...)`` and hands the one context it returns to asyncio, which creates
a new TLS connection from it for every client. We give it a *front* context whose
``sni_callback`` runs at the start of every handshake — OpenSSL 3 calls it even when the client
sends no server name (a bare IP) — and there we

1. ``stat`` the certificate, key and client-CA files (at most once per ``check_interval_s``);
2. when any changed, build a complete new context from the files (cert + key + CA together, so a
   half-written pair is never served: a failed load keeps the previous context and logs why);
3. switch the connection to the current context (``ssl_object.context = current``).

Existing connections keep the certificate they started with; new ones get the new one. So a
cert-manager renewal of the TLS Secret (the kubelet swaps the mounted files) takes effect without a
restart. Where that is not wanted, the operator's checksum annotation on the pod template rolls the
pods when the Secret changes, which is the fallback rollout path.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoglm_runtime.filewatch import file_identity

log = logging.getLogger(__name__)

# ECDHE key exchange with AEAD ciphers only, for TLS 1.2 (TLS 1.3 suites are fixed by OpenSSL and all
# are modern). Matches the Mozilla "intermediate" profile minus the DHE suites.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


class TLSConfigError(ValueError):
    """The TLS files cannot be used; the message names the file and what to do."""


def _check_readable(label: str, path: Path) -> None:
    if not path.is_file():
        raise TLSConfigError(f"{label} {path}: file not found (mount the TLS Secret there)")
    if not os.access(path, os.R_OK):
        raise TLSConfigError(f"{label} {path}: not readable by this user")


def build_server_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, AEAD ciphers, and client certificates required when ``client_ca_file``."""
    cert_file, key_file = Path(cert_file), Path(key_file)
    _check_readable("tls_cert_file", cert_file)
    _check_readable("tls_key_file", key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"tls_cert_file {cert_file} / tls_key_file {key_file}: cannot load the pair ({exc.reason or exc}); "
            "check both are PEM and that the key belongs to the certificate"
        ) from None
    if client_ca_file is not None:
        client_ca_file = Path(client_ca_file)
        _check_readable("tls_client_ca_file", client_ca_file)
        try:
            ctx.load_verify_locations(cafile=client_ca_file)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"tls_client_ca_file {client_ca_file}: not a PEM CA bundle ({exc.reason or exc})"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED  # mTLS: no certificate signed by the CA, no handshake
    return ctx


class ReloadingTLS:
    """Owns the server's TLS context and swaps in a new one when the files change (see module doc)."""

    def __init__(
        self,
        cert_file: Path | str,
        key_file: Path | str,
        client_ca_file: Path | str | None = None,
        *,
        check_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.client_ca_file = Path(client_ca_file) if client_ca_file is not None else None
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._current = build_server_context(self.cert_file, self.key_file, self.client_ca_file)
        self._identity = file_identity(*self._paths())
        self._next_check = clock() + check_interval_s
        self.reloads = 0
        # The front context is what the listening socket holds; it must demand client certificates
        # itself too, because the request for one is decided before the callback switches contexts.
        self.front = build_server_context(self.cert_file, self.key_file, self.client_ca_file)
        self.front.sni_callback = self._on_handshake

    def _paths(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None]

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Rebuild the context when a file changed; True when a new one was installed."""
        now = self._clock()
        with self._lock:
            if not force and now < self._next_check:
                return False
            self._next_check = now + self.check_interval_s
            try:
                identity = file_identity(*self._paths())
            except OSError as exc:
                log.warning("TLS files not readable (%s); keeping the current certificate", exc.strerror)
                return False
            if identity == self._identity and not force:
                return False
            try:
                ctx = build_server_context(self.cert_file, self.key_file, self.client_ca_file)
            except TLSConfigError as exc:
                # Mid-rotation (new cert, old key) or a broken Secret: keep serving the old pair.
                log.warning("TLS reload failed, keeping the current certificate: %s", exc)
                return False
            self._current = ctx
            self._identity = identity
            self.reloads += 1
        log.info("Reloaded TLS certificate from %s", self.cert_file)
        return True

    def _on_handshake(self, ssl_object: Any, server_name: str | None, front: ssl.SSLContext) -> None:
        try:
            self.maybe_reload()
            ssl_object.context = self._current
        except Exception:  # never fail a handshake because of reload bookkeeping
            log.exception("TLS context switch failed; serving this connection with the startup certificate")

    def uvicorn_factory(self) -> Callable[..., ssl.SSLContext]:
        """For ``uvicorn.Config(ssl_context_factory=...)``: always our front context."""

        def factory(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            return self.front

        return factory
