"""What a previous fetch verified, so a restart trusts it without re-hashing 18 GB.

A file counts as complete when the manifest lists it with the digest the hub lists now, and its size
and mtime on disk are what they were right after verification. A truncated or rewritten file fails
that stat check and is re-hashed (kept if the content still matches) or downloaded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoglm_runtime.fetch.hub import RemoteFile
from autoglm_runtime.fetch.logs import log

MANIFEST = "manifest.json"
_HASH_CHUNK = 8 << 20


@dataclass
class Entry:
    size: int
    sha256: str
    blob_id: str | None
    mtime_ns: int


@dataclass
class Manifest:
    repo_id: str
    revision: str
    commit: str | None = None
    complete: bool = False
    files: dict[str, Entry] = field(default_factory=dict)


def load(state: Path) -> Manifest | None:
    path = state / MANIFEST
    try:
        doc = json.loads(path.read_text())
        files = {name: Entry(**entry) for name, entry in doc.pop("files", {}).items()}
        return Manifest(**doc, files=files)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable manifest %s (%s); cached files will be re-hashed", path, exc)
        return None


def save(state: Path, manifest: Manifest) -> None:
    """Atomically (write + rename), so a crash leaves the old or the new manifest, never half of one."""
    path = state / MANIFEST
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(manifest), f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_blob_sha1(size: int) -> hashlib._Hash:
    """A sha1 primed with git's blob header: its hexdigest is the hub's ``blobId`` of the content."""
    return hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)


def hash_file(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, read once."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), git_blob_sha1(size)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def digest_problem(remote: RemoteFile, size: int, sha256: str, blob_sha1: str | None) -> str | None:
    """Why content with these digests is not ``remote`` (None when it is, as far as the hub says)."""
    if remote.size is not None and size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    if remote.sha256 is not None and sha256 != remote.sha256:
        return f"sha256 {sha256}, expected {remote.sha256}"
    if remote.sha256 is None and remote.blob_id and blob_sha1 is not None and blob_sha1 != remote.blob_id:
        return f"git blob id {blob_sha1}, expected {remote.blob_id}"
    return None


def describes(entry: Entry, remote: RemoteFile) -> bool:
    """The manifest entry is for the same content the hub lists now (same size and digest)."""
    if remote.size is not None and entry.size != remote.size:
        return False
    if remote.sha256 is not None:
        return entry.sha256 == remote.sha256
    return not (remote.blob_id and entry.blob_id and entry.blob_id != remote.blob_id)


def stat_matches(path: Path, entry: Entry) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns


def record(path: Path, sha256: str, blob_id: str | None) -> Entry:
    st = path.stat()
    return Entry(size=st.st_size, sha256=sha256, blob_id=blob_id, mtime_ns=st.st_mtime_ns)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
