"""Download one file: resumable (``.incomplete`` + HTTP Range), retried, verified, then renamed in place."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from autoglm_runtime.fetch import manifest
from autoglm_runtime.fetch.errors import CancelledError, ExitCode, FetchError, TransientError
from autoglm_runtime.fetch.hub import Context, RemoteFile, http_failure, linked_sha256
from autoglm_runtime.fetch.logs import human_bytes, log
from autoglm_runtime.fetch.progress import Progress
from autoglm_runtime.fetch.retry import RetryPolicy, with_retries

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def disk_error(exc: OSError, path: Path, doing: str) -> FetchError:
    """ENOSPC and friends → exit code 6 with what to do; anything else is re-raised by the caller."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(
            ExitCode.DISK,
            f"disk full while {doing} {path}: the model cache volume has no space left. Enlarge the cache "
            "PVC (or free space on it); the partial download is kept and resumes on the next run",
        )
    return FetchError(
        ExitCode.DISK,
        f"cannot write {path} while {doing} ({os.strerror(exc.errno or 0)}): check that the cache volume is "
        "mounted read-write and writable by the pod's user (fsGroup)",
    )


def is_disk_error(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class _HashState:
    """sha256 of the first ``upto`` bytes of the partial file, kept across attempts in one run."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.upto = 0

    def sync(self, partial: Path, have: int) -> None:
        if self.upto == have:
            return
        # Resuming a partial file this run did not write: hash its prefix once.
        self.reset()
        with open(partial, "rb") as f:
            while self.upto < have and (chunk := f.read(min(manifest._HASH_CHUNK, have - self.upto))):
                self.update(chunk)

    def reset(self) -> None:
        self.sha256, self.upto = hashlib.sha256(), 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.upto += len(chunk)


class Downloader:
    """Shared by the worker threads of one fetch."""

    def __init__(
        self,
        client: httpx.Client,
        ctx: Context,
        commit: str,
        token: str | None,
        target: Path,
        partial_dir: Path,
        policy: RetryPolicy,
        checksum_attempts: int,
        progress: Progress,
        cancel: threading.Event,
    ) -> None:
        self.client, self.ctx, self.commit, self.token = client, ctx, commit, token
        self.target, self.partial_dir = target, partial_dir
        self.policy, self.checksum_attempts = policy, max(checksum_attempts, 1)
        self.progress, self.cancel = progress, cancel

    def url(self, remote: RemoteFile) -> str:
        src = self.ctx.source
        return f"{src.endpoint}/{src.repo_id}/resolve/{quote(self.commit, safe='')}/{quote(remote.path)}"

    def partial_path(self, remote: RemoteFile) -> Path:
        return self.partial_dir / (remote.path + ".incomplete")

    def fetch(self, remote: RemoteFile) -> manifest.Entry:
        """Download ``remote`` into place and return its manifest entry; FetchError when it cannot."""
        partial, final = self.partial_path(remote), self.target / remote.path
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, final.parent, "creating") from None
        started = time.monotonic()
        problem = ""
        for attempt in range(1, self.checksum_attempts + 1):
            hashes = _HashState()
            expected_sha: list[str | None] = [remote.sha256]
            with_retries(
                functools.partial(self._attempt, remote, partial, hashes, expected_sha),
                self.policy,
                f"download {remote.path}",
            )
            sha256 = hashes.sha256.hexdigest()
            size = partial.stat().st_size
            blob_sha1 = None
            if expected_sha[0] is None and remote.blob_id:
                blob_sha1 = manifest.hash_file(partial)[1]  # small non-LFS file: its git blob id
            checked = RemoteFile(remote.path, remote.size, expected_sha[0], remote.blob_id)
            problem = manifest.digest_problem(checked, size, sha256, blob_sha1) or ""
            if not problem:
                if expected_sha[0] is None and not remote.blob_id:
                    log.warning(
                        "%s: the server lists no digest for it; only its size was checked", remote.path
                    )
                try:
                    os.replace(partial, final)
                except OSError as exc:
                    raise disk_error(exc, final, "moving into place") from None
                self.progress.file_done()
                elapsed = time.monotonic() - started
                log.info("downloaded %s (%s) in %.1fs, verified", remote.path, human_bytes(size), elapsed)
                return manifest.record(final, sha256, remote.blob_id)
            manifest.remove_quietly(partial)
            self.progress.rewind(size)
            log.warning(
                "%s failed verification (%s), deleted; download %d of %d",
                remote.path,
                problem,
                attempt,
                self.checksum_attempts,
            )
        manifest.remove_quietly(final)
        raise FetchError(
            ExitCode.CHECKSUM,
            f"{remote.path} failed verification {self.checksum_attempts} times ({problem}); the bad copy was "
            f"deleted. The server at {self.ctx.source.display_endpoint} serves different bytes than the hub "
            "lists for this revision (a stale or corrupt mirror cache, or a proxy rewriting content): "
            "fix or purge the mirror, or fetch from the hub",
        )

    def _attempt(
        self, remote: RemoteFile, partial: Path, hashes: _HashState, expected_sha: list[str | None]
    ) -> None:
        """One GET (resuming with Range); raises TransientError for anything worth retrying."""
        have = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and have > remote.size:
            manifest.remove_quietly(partial)
            have = 0
        if remote.size is not None and have == remote.size and have > 0:
            hashes.sync(partial, have)  # finished by an earlier run that stopped before verifying
            return
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if have:
            headers["Range"] = f"bytes={have}-"
        what = f"{self.ctx.source.repo_id}/resolve/{self.commit}/{remote.path}"
        wrote = 0
        try:
            with self.client.stream("GET", self.url(remote), headers=headers) as response:
                status = response.status_code
                if status == 416 and have:
                    manifest.remove_quietly(partial)
                    self.progress.rewind(have)
                    raise TransientError("the server refused to resume (HTTP 416); restarting")
                if status not in (200, 206):
                    response.read()
                    raise http_failure(status, response.headers, self.ctx, what)
                if expected_sha[0] is None and remote.size is not None:
                    # Mirrors without LFS metadata still send the hub's X-Linked-Etag (on the redirect).
                    for r in [*response.history, response]:
                        expected_sha[0] = expected_sha[0] or linked_sha256(r.headers.get("x-linked-etag"))
                mode = "ab"
                if status == 206:
                    match = _CONTENT_RANGE_RE.match(response.headers.get("content-range", ""))
                    if not match or int(match.group(1)) != have:
                        manifest.remove_quietly(partial)
                        self.progress.rewind(have)
                        raise TransientError("the server resumed at the wrong offset; restarting")
                elif have:
                    log.info("%s: the server ignored the Range header; restarting from byte 0", remote.path)
                    self.progress.rewind(have)
                    have, mode = 0, "wb"
                if have:
                    hashes.sync(partial, have)
                else:
                    hashes.reset()
                with open(partial, mode) as f:
                    for chunk in response.iter_bytes():  # as it arrives: a reset loses no buffered bytes
                        if self.cancel.is_set():
                            raise CancelledError()
                        f.write(chunk)
                        hashes.update(chunk)
                        wrote += len(chunk)
                        self.progress.add(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"{type(exc).__name__} (no data within the timeout)", progressed=wrote > 0
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}", progressed=wrote > 0) from None
        except OSError as exc:
            if is_disk_error(exc):
                raise disk_error(exc, partial, "writing") from None
            raise
        if remote.size is not None and have + wrote < remote.size:
            raise TransientError(
                f"body ended early ({have + wrote} of {remote.size} bytes)",
                progressed=wrote > 0,
            )
