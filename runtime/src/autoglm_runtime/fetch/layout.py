"""Where a fetched revision lives in the cache — stdlib only, so the operator can import it.

Layout (flat, one folder per repo and revision, loadable by ``from_pretrained`` as is)::

    <cache-dir>/<org>--<name>/<revision>/          files of the revision, e.g. config.json
    <cache-dir>/<org>--<name>/<revision>/.autoglm-fetch/
        manifest.json     what was verified (sizes, digests, mtimes) and whether it is complete
        fetch.lock        held while a fetch writes here (replicas sharing a PVC take turns)
        partial/*.incomplete  resumable partial downloads

``/`` in a revision (``refs/pr/1``) becomes ``--``. The path depends only on the source's repo id,
the revision *as given* and the cache dir, so it is known before any download (``--print-path``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HUB_ENDPOINT = "https://huggingface.co"
STATE_DIR = ".autoglm-fetch"

# Hub rules: names of letters, digits, '.', '_', '-'; no '--' or '..' (so '<org>--<name>' is unambiguous).
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?:{_NAME}/)?{_NAME}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class Source:
    """A repo on a hub-compatible server: ``endpoint`` is the HF_ENDPOINT-style base URL."""

    endpoint: str
    repo_id: str

    @property
    def display_endpoint(self) -> str:
        """The endpoint without any ``user:password@`` part, for logs."""
        parts = urlsplit(self.endpoint)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _check_repo_id(repo_id: str, text: str) -> str:
    if not _REPO_RE.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(
            f"model source {text!r}: {repo_id!r} is not a hub repo id; expected 'org/name' "
            "(letters, digits, '.', '_', '-'; no '--' or '..')"
        )
    return repo_id


def parse_source(text: str, default_endpoint: str | None = None) -> Source:
    """``hf://org/name``, ``org/name``, or ``https://mirror.example[/prefix]/org/name`` (base URL + repo id)."""
    text = text.strip()
    endpoint = (default_endpoint or os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")
    if text.startswith("pvc://"):
        raise ValueError(
            f"model source {text!r}: pvc:// sources are mounted volumes, there is nothing to fetch"
        )
    if text.startswith("hf://"):
        return Source(endpoint, _check_repo_id(text[len("hf://") :].strip("/"), text))
    if text.startswith(("https://", "http://")):
        parts = urlsplit(text)
        segments = [s for s in parts.path.split("/") if s]
        if not parts.hostname or len(segments) < 2 or parts.query or parts.fragment:
            raise ValueError(
                f"model source {text!r}: a mirror URL must be the mirror's base URL followed by 'org/name', "
                "e.g. https://mirror.example/zai-org/glm-4-9b-chat"
            )
        repo_id = _check_repo_id("/".join(segments[-2:]), text)
        base_path = "/" + "/".join(segments[:-2]) if len(segments) > 2 else ""
        return Source(urlunsplit((parts.scheme, parts.netloc, base_path, "", "")).rstrip("/"), repo_id)
    if "://" in text:
        raise ValueError(
            f"model source {text!r}: unsupported scheme; use hf://org/name, org/name or https://"
        )
    return Source(endpoint, _check_repo_id(text.strip("/"), text))


def revision_dirname(revision: str) -> str:
    """A revision as one path segment: ``refs/pr/1`` → ``refs--pr--1``."""
    if not _REVISION_RE.match(revision) or ".." in revision or revision.endswith("/") or "//" in revision:
        raise ValueError(
            f"revision {revision!r} is not valid: use a commit sha, a branch or a tag "
            "(letters, digits, '.', '_', '-', '/')"
        )
    return revision.replace("/", "--")


def model_dir(cache_dir: str | os.PathLike[str], source: str | Source, revision: str) -> Path:
    """The folder a fetch of ``source`` at ``revision`` fills (and ``serve --model`` loads)."""
    src = source if isinstance(source, Source) else parse_source(source)
    return Path(cache_dir) / src.repo_id.replace("/", "--") / revision_dirname(revision)


def state_dir(target: Path) -> Path:
    return target / STATE_DIR
