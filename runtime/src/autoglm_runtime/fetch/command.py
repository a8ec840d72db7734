"""``autoglm-runtime fetch``: plan, lock, download, verify, record — the init container's whole job."""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from filelock import FileLock, Timeout

from autoglm_runtime.fetch import manifest
from autoglm_runtime.fetch.download import Downloader, disk_error, is_disk_error
from autoglm_runtime.fetch.errors import CancelledError, ExitCode, FetchError
from autoglm_runtime.fetch.hub import Context, RemoteFile, get_revision
from autoglm_runtime.fetch.layout import Source, model_dir, parse_source, state_dir
from autoglm_runtime.fetch.logs import human_bytes, log, setup_logging
from autoglm_runtime.fetch.progress import Progress
from autoglm_runtime.fetch.retry import RetryPolicy, with_retries
from autoglm_runtime.fetch.selection import select_files

LOCK_FILE = "fetch.lock"
PARTIAL_DIR = "partial"


def read_token(token_file: str | None) -> str | None:
    """From ``--token-file`` (a mounted Secret) or ``HF_TOKEN``; None when neither is set."""
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            raise FetchError(
                ExitCode.USAGE,
                f"token file {path} does not exist: is the Secret (spec.model.credentialsSecret) mounted?",
            ) from None
        except OSError as exc:
            raise FetchError(ExitCode.USAGE, f"cannot read token file {path}: {exc.strerror}") from None
        if not token:
            raise FetchError(ExitCode.USAGE, f"token file {path} is empty: put the hub token in the Secret")
        return token
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def run(args: argparse.Namespace) -> int:
    token_error: FetchError | None = None
    token: str | None = None
    try:
        token = read_token(args.token_file)
    except FetchError as exc:
        token_error = exc
    fmt = args.log_format if args.log_format in ("json", "text") else "json"
    setup_logging(fmt, args.log_level, secrets=[token] if token else [])
    try:
        if token_error:
            raise token_error
        return _run(args, token)
    except FetchError as exc:
        log.error("fetch failed (exit code %d, %s): %s", exc.code, exc.code.name.lower(), exc.message)
        return int(exc.code)
    except Exception:
        log.exception("fetch failed (exit code 1): internal error; please report it with this log")
        return int(ExitCode.INTERNAL)


def _run(args: argparse.Namespace, token: str | None) -> int:
    try:
        source = parse_source(args.model, args.endpoint)
        if not args.cache_dir:
            raise ValueError(
                "--cache-dir (or AUTOGLM_CACHE_DIR) is required: the model cache volume's mount path"
            )
        target = model_dir(args.cache_dir, source, args.revision)
    except ValueError as exc:
        raise FetchError(ExitCode.USAGE, str(exc)) from None
    if args.print_path:
        print(target, flush=True)
        return 0
    ctx = Context(source, args.revision, has_token=token is not None)
    if args.offline:
        log.info("offline mode: checking %s for %s@%s", target, source.repo_id, args.revision)
        verify_cached(target, source, args.revision, rehash=args.verify)
    else:
        _warn_cleartext(source, token)
        state = state_dir(target)
        try:
            (state / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, state, "creating") from None
        with _cache_lock(state / LOCK_FILE, args.lock_timeout, max(args.progress_interval, 1.0)):
            _fetch_locked(args, ctx, token, target)
    _emit_path(target, args.output_file)
    return 0


def _warn_cleartext(source: Source, token: str | None) -> None:
    parts = urlsplit(source.endpoint)
    if token and parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "sending the token over plain http to %s; use an https:// mirror", source.display_endpoint
        )


def _emit_path(target: Path, output_file: str | None) -> None:
    if output_file:
        Path(output_file).write_text(f"{target}\n")
    print(target, flush=True)


@contextmanager
def _cache_lock(path: Path, timeout: float, interval: float) -> Iterator[None]:
    """Replicas sharing the cache take turns: the first downloads, the others wait, then find it complete."""
    lock = FileLock(str(path), thread_local=False)
    started = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another fetch is downloading this revision (lock %s held); waiting for it", path)
        while True:
            waited = time.monotonic() - started
            if timeout and waited >= timeout:
                raise FetchError(
                    ExitCode.LOCK_TIMEOUT,
                    f"waited {waited:.0f}s for another fetch of this revision (lock {path}) and gave up "
                    "(--lock-timeout); is another pod stuck downloading? It releases the lock when it exits",
                ) from None
            step = interval if not timeout else min(interval, timeout - waited)
            try:
                lock.acquire(timeout=max(step, 0.01))
                break
            except Timeout:
                log.info("still waiting for the other fetch (%.0fs so far)", time.monotonic() - started)
        log.info("the other fetch finished; checking what it left")
    except OSError as exc:
        raise disk_error(exc, path, "locking") from None
    try:
        yield
    finally:
        lock.release()


def verify_cached(target: Path, source: Source, revision: str, *, rehash: bool) -> manifest.Manifest:
    """Succeed only if the manifest says complete and every file is still as verified (no network)."""
    m = manifest.load(state_dir(target))
    howto = "run the fetch once with network access, or turn offline mode off (--offline / HF_HUB_OFFLINE)"
    if m is None or not m.complete:
        raise FetchError(
            ExitCode.OFFLINE_INCOMPLETE,
            f"offline: {target} holds no complete download of {source.repo_id}@{revision}; {howto}",
        )
    changed = False
    for name, entry in sorted(m.files.items()):
        path = target / name
        if not rehash and manifest.stat_matches(path, entry):
            continue
        problem = _recheck(path, entry)
        if problem:
            raise FetchError(ExitCode.OFFLINE_INCOMPLETE, f"offline: cached {path} is {problem}; {howto}")
        m.files[name] = manifest.record(path, entry.sha256, entry.blob_id)
        changed = True
    if changed:
        _save_quietly(target, m)
    log.info("offline: %s is complete (%d files, commit %s)", target, len(m.files), m.commit)
    return m


def _recheck(path: Path, entry: manifest.Entry) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != entry.size:
        return f"truncated or changed ({size} bytes, expected {entry.size})"
    sha256, _ = manifest.hash_file(path)
    return None if sha256 == entry.sha256 else "changed (sha256 differs from the verified copy)"


def _save_quietly(target: Path, m: manifest.Manifest) -> None:
    try:
        manifest.save(state_dir(target), m)
    except OSError as exc:  # a read-only cache still serves; the next writable run updates the manifest
        log.warning("could not update the manifest (%s)", exc.strerror)


def _fetch_locked(args: argparse.Namespace, ctx: Context, token: str | None, target: Path) -> None:
    state = state_dir(target)
    source, revision = ctx.source, ctx.revision
    policy = RetryPolicy(args.max_attempts, args.backoff_initial, args.backoff_max, args.max_retry_after)
    log.info("fetching %s@%s from %s into %s", source.repo_id, revision, source.display_endpoint, target)
    old = manifest.load(state)
    try:
        info = with_retries(
            lambda: get_revision(source, revision, token, args.read_timeout, ctx),
            policy,
            f"list files of {source.repo_id}@{revision}",
        )
    except FetchError as exc:
        if exc.code == ExitCode.NETWORK and old is not None and old.complete:
            log.warning("%s; the cache holds a complete copy (commit %s), using it", exc.message, old.commit)
            verify_cached(target, source, revision, rehash=args.verify)
            return
        raise

    by_name = {f.path: f for f in info.files}
    wanted = select_files(
        list(by_name),
        allow=args.allow_patterns,
        ignore=args.ignore_patterns,
        trust_remote_code=args.trust_remote_code,
    )
    if not wanted:
        sample = ", ".join(sorted(by_name)[:12]) or "no files at all"
        raise FetchError(
            ExitCode.NOT_FOUND,
            f"no file of {source.repo_id}@{revision} matches the allow patterns (the repo has: {sample}); "
            "pass --allow-patterns for this layout",
        )
    if not any(n.endswith((".safetensors", ".bin")) for n in wanted):
        log.warning(
            "%s@%s has no weights among the selected files (%d files)", source.repo_id, revision, len(wanted)
        )

    m = old if old is not None else manifest.Manifest(source.repo_id, revision)
    if m.commit and m.commit != info.commit:
        log.info(
            "revision %s moved from commit %s to %s; updating the cache", revision, m.commit, info.commit
        )
    todo = _plan(target, m, [by_name[n] for n in wanted], rehash=args.verify)
    for name in sorted(set(m.files) - set(wanted)):  # files of an older commit that the new one dropped
        manifest.remove_quietly(target / name)
        del m.files[name]
    m.commit, m.complete = info.commit, False
    try:
        manifest.save(state, m)
    except OSError as exc:
        raise disk_error(exc, state / manifest.MANIFEST, "writing") from None

    if todo:
        _download_all(args, ctx, token, target, info.commit, todo, m)
    m.complete = True
    try:
        manifest.save(state, m)
    except OSError as exc:
        raise disk_error(exc, state / manifest.MANIFEST, "writing") from None
    shutil.rmtree(state / PARTIAL_DIR, ignore_errors=True)
    total = sum(e.size for e in m.files.values())
    log.info(
        "fetched %s@%s (commit %s) into %s: %d files, %s (%d downloaded now)",
        source.repo_id,
        revision,
        info.commit,
        target,
        len(m.files),
        human_bytes(total),
        len(todo),
    )


def _plan(target: Path, m: manifest.Manifest, wanted: list[RemoteFile], *, rehash: bool) -> list[RemoteFile]:
    """The files still to download; files already verified (by the manifest, or by hashing) are kept."""
    todo: list[RemoteFile] = []
    for remote in wanted:
        path = target / remote.path
        entry = m.files.get(remote.path)
        if (
            entry is not None
            and manifest.describes(entry, remote)
            and not rehash
            and manifest.stat_matches(path, entry)
        ):
            continue
        if path.is_file():
            # Not vouched for by the manifest (stat changed, manifest lost, --verify): hash once, keep if good.
            sha256, sha1 = manifest.hash_file(path)
            if manifest.digest_problem(remote, path.stat().st_size, sha256, sha1) is None:
                m.files[remote.path] = manifest.record(path, sha256, remote.blob_id)
                continue
            log.info("%s on disk does not match the hub's digest; downloading it again", remote.path)
        m.files.pop(remote.path, None)
        todo.append(remote)
    return todo


def _download_all(
    args: argparse.Namespace,
    ctx: Context,
    token: str | None,
    target: Path,
    commit: str,
    todo: list[RemoteFile],
    m: manifest.Manifest,
) -> None:
    partial_dir = state_dir(target) / PARTIAL_DIR
    resumed = 0
    for remote in todo:
        p = partial_dir / (remote.path + ".incomplete")
        if p.is_file() and remote.size is not None and p.stat().st_size <= remote.size:
            resumed += p.stat().st_size
    need = sum(r.size or 0 for r in todo)
    free = shutil.disk_usage(target).free
    if need - resumed > free:
        raise FetchError(
            ExitCode.DISK,
            f"not enough space in {target}: {human_bytes(need - resumed)} still to download, "
            f"{human_bytes(free)} free. Enlarge the model cache volume or free space on it",
        )
    log.info(
        "downloading %d files, %s (%s already partly downloaded)",
        len(todo),
        human_bytes(need),
        human_bytes(resumed),
    )
    progress = Progress(need, len(todo), args.progress_interval, already=resumed)
    cancel = threading.Event()
    record_lock = threading.Lock()
    timeout = httpx.Timeout(
        connect=args.connect_timeout, read=args.read_timeout, write=args.read_timeout, pool=None
    )
    headers = {"user-agent": "autoglm-runtime-fetch"}
    with httpx.Client(timeout=timeout, follow_redirects=True, headers=headers, trust_env=True) as client:
        downloader = Downloader(
            client,
            ctx,
            commit,
            token,
            target,
            partial_dir,
            RetryPolicy(args.max_attempts, args.backoff_initial, args.backoff_max, args.max_retry_after),
            args.checksum_attempts,
            progress,
            cancel,
        )

        def one(remote: RemoteFile) -> None:
            entry = downloader.fetch(remote)
            with record_lock:  # a restart keeps every file finished so far
                m.files[remote.path] = entry
                manifest.save(state_dir(target), m)

        with ThreadPoolExecutor(max_workers=max(1, min(args.workers, len(todo)))) as pool:
            futures = [pool.submit(one, r) for r in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() for f in done):
                cancel.set()
            wait(futures)
    errors = [e for f in futures if (e := f.exception()) is not None]
    real = [e for e in errors if not isinstance(e, CancelledError)]
    if real:
        first = real[0]
        if isinstance(first, OSError) and is_disk_error(first):
            raise disk_error(first, target, "writing") from None
        raise first
    log.info("progress: %s", progress.summary())
