"""API-key authentication: keys from a mounted file, rotated without a restart, never logged.

The file holds one key per line; blank lines and ``#`` comments are ignored, so a Secret can carry
several keys at once (old and new during a rotation). The file is re-read when its identity
(inode, size, mtime) changes; Kubernetes updates a mounted Secret by swapping a symlink, which
changes all three, so a rotated key works within ``check_interval_s`` without restarting the pod.

Comparison is constant-time: the presented key and every configured key are hashed to SHA-256
digests of equal length and compared with :func:`hmac.compare_digest` against *every* key, with no
early exit, so neither the position of a matching key nor a shared prefix changes the timing.

Nothing here ever logs, returns or raises with a key in it. Callers get a :func:`key_id` instead:
a short, non-reversible hash that is safe to use as a rate-limit bucket name or a log field.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoglm_runtime.filewatch import file_identity

log = logging.getLogger(__name__)

# Domain-separates key ids from any other SHA-256 of the key (e.g. the comparison digests).
_KEY_ID_PREFIX = b"autoglm-api-key-id\x00"
_KEY_ID_HEX_CHARS = 12  # 48 bits: unique enough to tell keys apart, too short to be a digest index


class ApiKeysError(ValueError):
    """The API-keys file cannot be used (missing, unreadable, or without a single key)."""


def key_id(key: str) -> str:
    """A short non-reversible name for ``key`` (``"k-" + 12 hex chars``), safe to log and to label."""
    digest = hashlib.sha256(_KEY_ID_PREFIX + key.encode()).hexdigest()
    return "k-" + digest[:_KEY_ID_HEX_CHARS]


def parse_keys(text: str) -> list[str]:
    """Keys of a keys file: one per line, surrounding whitespace stripped, blanks and ``#`` lines dropped."""
    keys = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keys.append(stripped)
    return keys


def presented_key(authorization: str | None, x_api_key: str | None = None) -> str | None:
    """The key a client sent: ``Authorization: Bearer <key>`` (what OpenAI clients send) or ``X-API-Key``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    ident: str


def _entries(keys: list[str]) -> tuple[_Entry, ...]:
    return tuple(_Entry(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys)


class ApiKeys:
    """The configured keys of one runtime; :meth:`verify` is safe to call from any thread.

    ``check_interval_s`` bounds how often the file is stat'ed (at most once per interval, on the
    request path), so a busy server costs one ``stat`` per second, not one per request.
    """

    def __init__(
        self, path: Path | str, *, check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        try:
            identity = file_identity(self.path)
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ApiKeysError(
                f"api_keys_file {self.path}: cannot read it ({exc.strerror or exc}); "
                "mount the API-keys Secret there or unset AUTOGLM_API_KEYS_FILE to turn auth off"
            ) from None
        except UnicodeDecodeError:
            raise ApiKeysError(
                f"api_keys_file {self.path}: not UTF-8 text (expected one key per line)"
            ) from None
        keys = parse_keys(text)
        if not keys:
            raise ApiKeysError(
                f"api_keys_file {self.path}: no keys found (expected one key per line; blank and # lines are ignored)"
            )
        self._entries = _entries(keys)
        self._identity = identity
        self._next_check = clock() + check_interval_s
        self.reloads = 0
        log.info("Loaded %d API key(s) from %s", len(keys), self.path)

    @property
    def count(self) -> int:
        return len(self._entries)

    def key_ids(self) -> list[str]:
        """The ids of the configured keys (for diagnostics; never the keys)."""
        return [e.ident for e in self._entries]

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Re-read the file when it changed; True when the key set was replaced.

        A file that cannot be read keeps the last good keys (a transient error must not lock every
        client out); a file that is readable but holds no keys is taken at its word and rejects
        everyone (fail closed), with an error in the log.
        """
        now = self._clock()
        with self._lock:
            if not force and now < self._next_check:
                return False
            self._next_check = now + self.check_interval_s
            try:
                identity = file_identity(self.path)
                if identity == self._identity and not force:
                    return False
                text = self.path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.warning(
                    "API keys file %s unreadable (%s); keeping the %d key(s) loaded before",
                    self.path,
                    type(exc).__name__,
                    len(self._entries),
                )
                return False
            keys = parse_keys(text)
            self._entries = _entries(keys)
            self._identity = identity
            self.reloads += 1
        if keys:
            log.info("Reloaded API keys from %s: %d key(s)", self.path, len(keys))
        else:
            log.error("API keys file %s now holds no keys: every request will get 401", self.path)
        return True

    def verify(self, presented: str | None) -> str | None:
        """The :func:`key_id` of ``presented`` when it is a configured key, else None.

        Runs in time independent of which key matched and of how much of any key was right.
        """
        self.maybe_reload()
        if presented is None:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        match: str | None = None
        for entry in self._entries:  # no early exit: every key is compared
            if hmac.compare_digest(digest, entry.digest):
                match = entry.ident
        return match
