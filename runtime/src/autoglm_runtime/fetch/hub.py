"""What a revision holds (``HfApi.model_info(files_metadata=True)``) and what HTTP failures mean."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from autoglm_runtime.fetch.errors import ExitCode, FetchError, TransientError
from autoglm_runtime.fetch.layout import Source
from autoglm_runtime.fetch.retry import parse_retry_after

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # LFS files: the hub's sha256 of the content
    blob_id: str | None  # git blob sha1; checked for small (non-LFS) files

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class RevisionInfo:
    commit: str
    files: list[RemoteFile]


@dataclass(frozen=True)
class Context:
    """What error messages need to say who, where and what to do."""

    source: Source
    revision: str
    has_token: bool


def linked_sha256(value: str | None) -> str | None:
    """The hub's ``X-Linked-Etag`` (quoted sha256 of an LFS file), if it is one."""
    value = (value or "").strip().strip('"').removeprefix("W/").strip('"')
    return value if _SHA256_RE.match(value) else None


def http_failure(status: int, headers: Mapping[str, str], ctx: Context, what: str) -> Exception:
    """A failed HTTP answer → TransientError (retry) or FetchError (exit code + what to do)."""
    repo, rev, endpoint = ctx.source.repo_id, ctx.revision, ctx.source.display_endpoint
    code = headers.get("x-error-code", "")
    server_says = headers.get("x-error-message", "")
    if status in (408, 425, 429) or status >= 500:
        return TransientError(
            f"HTTP {status} for {what}", retry_after=parse_retry_after(headers.get("retry-after"))
        )
    token_howto = "set HF_TOKEN or --token-file (the Secret named by spec.model.credentialsSecret)"
    if status == 401:
        if not ctx.has_token:
            return FetchError(
                ExitCode.AUTH,
                f"HTTP 401 for {what} and no token was given: {repo} is private or gated, or does not exist. "
                f"If it exists, {token_howto}; otherwise check the repo id in spec.model.source",
            )
        return FetchError(
            ExitCode.AUTH,
            f"HTTP 401 for {what}: the token was rejected (invalid, expired or revoked) or cannot see {repo}. "
            f"Create a read token at {endpoint}/settings/tokens and update the Secret",
        )
    if status == 403:
        if code == "GatedRepo":
            if not ctx.has_token:
                return FetchError(
                    ExitCode.AUTH,
                    f"{repo} is a gated repo and no token was given: {token_howto}, for an account "
                    f"that accepted the conditions at {endpoint}/{repo}",
                )
            return FetchError(
                ExitCode.AUTH,
                f"{repo} is a gated repo and the token's account has not been granted access (HTTP 403): log in "
                f"to {endpoint}/{repo} as the token's owner, accept the conditions, wait for approval, then retry",
            )
        detail = f" (server: {server_says})" if server_says else ""
        if not ctx.has_token:
            return FetchError(ExitCode.AUTH, f"HTTP 403 for {what} without a token{detail}: {token_howto}")
        return FetchError(
            ExitCode.AUTH,
            f"HTTP 403 for {what}{detail}: the token may not read {repo}. A fine-grained token needs read access "
            "to this repo (or to public gated repos); a mirror may need its own credentials",
        )
    if status == 404:
        if code == "RevisionNotFound":
            return FetchError(
                ExitCode.NOT_FOUND,
                f"revision {rev!r} not found in {repo} at {endpoint}: check spec.model.revision "
                "(a commit sha, branch or tag)",
            )
        if code == "EntryNotFound" or "/resolve/" in what:
            return FetchError(
                ExitCode.NOT_FOUND,
                f"{what}: HTTP 404 although the file list names it; a mirror that has not synced this revision "
                "yet? Retry later or pin a revision the mirror has",
            )
        hint = " (or the token cannot see this private repo)" if ctx.has_token else ""
        return FetchError(
            ExitCode.NOT_FOUND,
            f"repository {repo} not found at {endpoint}{hint}: check spec.model.source",
        )
    return FetchError(ExitCode.NETWORK, f"HTTP {status} for {what}: unexpected answer from {endpoint}")


def is_safe_name(name: str) -> bool:
    """A relative path inside the repo: no absolute paths, no '..', no backslashes or empty parts."""
    parts = name.split("/")
    return (
        bool(name)
        and "\\" not in name
        and not name.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
    )


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub has used requests (OSError subclasses), httpx and httpx2 across versions.
    errors: list[type[BaseException]] = [OSError, httpx.TransportError, TimeoutError]
    try:
        import httpx2

        errors.append(httpx2.TransportError)
    except ImportError:
        pass
    return tuple(errors)


def get_revision(
    source: Source, revision: str, token: str | None, timeout: float, ctx: Context
) -> RevisionInfo:
    """One metadata request: commit sha, file names, sizes, LFS sha256, git blob ids."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    what = f"file list of {source.repo_id}@{revision}"
    try:
        info = HfApi(endpoint=source.endpoint, library_name="autoglm-runtime-fetch").model_info(
            source.repo_id, revision=revision, files_metadata=True, timeout=timeout, token=token or False
        )
    except HfHubHTTPError as exc:
        response = exc.response
        if response is None:
            raise TransientError(f"{what}: {type(exc).__name__}") from None
        lowered = {k.lower(): v for k, v in response.headers.items()}
        raise http_failure(response.status_code, lowered, ctx, what) from None
    except OfflineModeIsEnabled:
        raise FetchError(
            ExitCode.USAGE,
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE) but --offline "
            "was not requested: unset those variables or pass --offline",
        ) from None
    except _transport_errors() as exc:
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # garbled JSON from a server that is not hub-compatible
        raise FetchError(
            ExitCode.NETWORK, f"{what}: {source.display_endpoint} did not answer like the hub API ({exc})"
        ) from None
    if info.siblings is None:
        raise FetchError(
            ExitCode.NOT_FOUND,
            f"{what}: {source.display_endpoint} returned no file list; is it a hub-compatible mirror?",
        )
    unsafe = [s.rfilename for s in info.siblings if not is_safe_name(s.rfilename)]
    if unsafe:  # a hostile or broken server must not make us write outside the model folder
        raise FetchError(
            ExitCode.NETWORK,
            f"{what}: {source.display_endpoint} listed unsafe file names {unsafe[:3]}; refusing them",
        )
    files = [
        RemoteFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs else s.size,
            sha256=s.lfs.sha256.lower() if s.lfs and s.lfs.sha256 else None,
            blob_id=s.blob_id,
        )
        for s in info.siblings
    ]
    return RevisionInfo(commit=info.sha or revision, files=files)
