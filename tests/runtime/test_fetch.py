"""``autoglm-runtime fetch`` against a real local HTTP server that answers like the hub, with faults.

Each failure mode has a test that fails without the feature: resume must send Range, retries must
happen, checksums must be checked, the manifest must spare re-hashing, offline must need no server.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest

from autoglm_runtime.fetch import ExitCode, download, manifest
from autoglm_runtime.fetch.layout import model_dir
from tests.runtime.fetchrepo import NEEDED, NOT_NEEDED, REPO_FILES, SHARD, Fetcher
from tests.runtime.hubserver import Fault, HubServer

CANARY = "hf_CANARYtokenDoNotLog1234567890"


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs with HF_HUB_OFFLINE=1; these tests talk to 127.0.0.1 only, never to a hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(online: None) -> Iterator[HubServer]:
    with HubServer(REPO_FILES) as server:
        yield server


@pytest.fixture
def fetch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Fetcher:
    return Fetcher(capsys, tmp_path / "models")


def assert_complete(path: Path) -> None:
    for name, data in NEEDED.items():
        assert (path / name).read_bytes() == data, name
    for name in NOT_NEEDED:
        assert not (path / name).exists(), name


# --- the happy path ---------------------------------------------------------------------------------


def test_fetches_what_inference_needs_into_the_documented_folder(hub: HubServer, fetch: Fetcher) -> None:
    result = fetch(hub.source, "--revision", "main")
    assert result.code == 0, result.err
    assert result.path == fetch.cache / "acme--tiny" / "main" == model_dir(fetch.cache, hub.source, "main")
    assert_complete(result.path)
    assert all(len(hub.downloads(name)) == 1 for name in NEEDED)
    assert "fetched acme/tiny@main (commit 0123456789abcdef" in result.err


def test_print_path_needs_no_server(online: None, fetch: Fetcher) -> None:
    result = fetch("hf://zai-org/AutoGLM-Phone-9B", "--revision", "refs/pr/1", "--print-path")
    assert result.code == 0
    assert result.out == f"{fetch.cache}/zai-org--AutoGLM-Phone-9B/refs--pr--1\n"


def test_hf_scheme_with_endpoint_and_mirror_prefix(online: None, fetch: Fetcher, tmp_path: Path) -> None:
    with HubServer(NEEDED, prefix="/artifactory/api/hf") as mirror:
        result = fetch("hf://acme/tiny", "--endpoint", mirror.base)
        assert result.code == 0, result.err
        assert_complete(result.path)
        url = f"{mirror.source}/"
        assert fetch("https://example.invalid/bad-url").code == ExitCode.USAGE
        assert fetch(url).code == 0  # a trailing slash is fine


def test_trust_remote_code_also_fetches_python_files(hub: HubServer, fetch: Fetcher) -> None:
    result = fetch(hub.source, "--trust-remote-code")
    assert result.code == 0, result.err
    assert (result.path / "modeling_glm.py").read_bytes() == REPO_FILES["modeling_glm.py"]


def test_pickle_weights_only_when_there_are_no_safetensors(online: None, fetch: Fetcher) -> None:
    files = {k: v for k, v in REPO_FILES.items() if not k.endswith(".safetensors")}
    with HubServer(files) as hub:
        result = fetch(hub.source)
        assert result.code == 0, result.err
        assert (result.path / "pytorch_model.bin").exists()
        assert not (result.path / "model.gguf").exists()


def test_explicit_allow_patterns_replace_the_defaults(hub: HubServer, fetch: Fetcher) -> None:
    result = fetch(hub.source, "--allow-patterns", "*.gguf", "config.json")
    assert result.code == 0, result.err
    names = sorted(p.name for p in result.path.iterdir() if not p.name.startswith("."))
    assert names == ["config.json", "model.gguf"]


def test_progress_lines_have_bytes_percent_and_rate_at_a_bounded_frequency(
    hub: HubServer, fetch: Fetcher
) -> None:
    hub.chunk_size = 16 * 1024
    chatty = fetch(hub.source, "--progress-interval", "0", "--workers", "1").err
    lines = [line for line in chatty.splitlines() if "progress:" in line]
    assert len(lines) > len(NEEDED)  # every chunk may report when the interval is 0
    assert "2.1 MiB / 2.1 MiB (100.0%) at" in lines[-1]
    assert "MiB/s" in lines[-1]
    assert "8 of 8 files" in lines[-1]
    manifest_file = fetch.cache / "acme--tiny" / "main" / ".autoglm-fetch" / "manifest.json"
    manifest_file.unlink()
    for name in NEEDED:
        (fetch.cache / "acme--tiny" / "main" / name).unlink()
    quiet = fetch(hub.source, "--progress-interval", "3600").err
    assert len([line for line in quiet.splitlines() if "progress:" in line]) == 1  # only the summary


# --- restart, skip, verify ----------------------------------------------------------------------------


def test_second_run_downloads_nothing_and_hashes_nothing(
    hub: HubServer, fetch: Fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fetch(hub.source).code == 0
    hashed: list[Path] = []
    real_hash = manifest.hash_file

    def counting_hash(path: Path) -> tuple[str, str]:
        hashed.append(path)
        return real_hash(path)

    monkeypatch.setattr(manifest, "hash_file", counting_hash)
    before = len(hub.requests)
    result = fetch(hub.source)
    assert result.code == 0, result.err
    assert [r.path for r in hub.requests[before:]] == ["/api/models/acme/tiny/revision/main"]
    assert hashed == []
    assert "(0 downloaded now)" in result.err


def test_truncated_cached_file_is_detected_and_fetched_again(hub: HubServer, fetch: Fetcher) -> None:
    path = fetch(hub.source).path
    with open(path / SHARD, "r+b") as f:
        f.truncate(1000)
    result = fetch(hub.source)
    assert result.code == 0, result.err
    assert (path / SHARD).read_bytes() == NEEDED[SHARD]
    assert len(hub.downloads(SHARD)) == 2
    assert all(len(hub.downloads(name)) == 1 for name in NEEDED if name != SHARD)


def test_copied_cache_with_new_mtimes_is_rehashed_not_downloaded(hub: HubServer, fetch: Fetcher) -> None:
    path = fetch(hub.source).path
    for name in NEEDED:
        os.utime(path / name, ns=(1, 1))
    assert fetch(hub.source).code == 0
    assert all(len(hub.downloads(name)) == 1 for name in NEEDED)


def test_verify_flag_rehashes_and_repairs_silent_corruption(hub: HubServer, fetch: Fetcher) -> None:
    path = fetch(hub.source).path
    st = (path / SHARD).stat()
    with open(path / SHARD, "r+b") as f:  # same size, same mtime: only a re-hash can tell
        f.write(b"\0" * 16)
    os.utime(path / SHARD, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fetch(hub.source).code == 0
    assert len(hub.downloads(SHARD)) == 1  # trusted the manifest
    result = fetch(hub.source, "--verify")
    assert result.code == 0, result.err
    assert (path / SHARD).read_bytes() == NEEDED[SHARD]
    assert len(hub.downloads(SHARD)) == 2


def test_branch_moved_updates_changed_files_and_drops_removed_ones(hub: HubServer, fetch: Fetcher) -> None:
    path = fetch(hub.source).path
    hub.files["config.json"] = b'{"model_type": "glm", "hidden_size": 128}'
    del hub.files["generation_config.json"]
    hub.commit = "f" * 40
    hub.revisions = {"main", hub.commit}
    result = fetch(hub.source)
    assert result.code == 0, result.err
    assert (path / "config.json").read_bytes() == hub.files["config.json"]
    assert not (path / "generation_config.json").exists()
    assert len(hub.downloads(SHARD)) == 0  # new commit's URL; the shard was not downloaded again
    assert "moved from commit 0123456789abcdef0123456789abcdef01234567 to ffff" in result.err


# --- resume ----------------------------------------------------------------------------------------


def test_truncated_body_resumes_with_a_range_request(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults.append(Fault("truncate", SHARD, fraction=0.6))
    result = fetch(hub.source, "--workers", "1")
    assert result.code == 0, result.err
    assert (result.path / SHARD).read_bytes() == NEEDED[SHARD]
    gets = hub.downloads(SHARD)
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    start = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= int(len(NEEDED[SHARD]) * 0.6)


def test_partial_file_survives_a_failed_run_and_the_next_run_resumes_it(
    hub: HubServer, fetch: Fetcher
) -> None:
    hub.faults += [Fault("truncate", SHARD, fraction=0.5), Fault("status", SHARD, times=-1, status=503)]
    failed = fetch(hub.source)
    assert failed.code == ExitCode.NETWORK
    partial = fetch.cache / "acme--tiny/main/.autoglm-fetch/partial" / f"{SHARD}.incomplete"
    kept = partial.stat().st_size
    assert kept > 0
    hub.faults.clear()
    result = fetch(hub.source)
    assert result.code == 0, result.err
    assert hub.downloads(SHARD)[-1].headers["range"] == f"bytes={kept}-"
    assert (result.path / SHARD).read_bytes() == NEEDED[SHARD]
    assert not partial.exists()


def test_server_that_ignores_range_restarts_cleanly(hub: HubServer, fetch: Fetcher) -> None:
    partial = fetch.cache / "acme--tiny/main/.autoglm-fetch/partial" / f"{SHARD}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"garbage that is not the start of the file")
    hub.faults.append(Fault("status", SHARD, status=416))  # a proxy that refuses the range
    result = fetch(hub.source)
    assert result.code == 0, result.err
    assert (result.path / SHARD).read_bytes() == NEEDED[SHARD]


# --- retries ---------------------------------------------------------------------------------------


def test_5xx_and_connection_resets_are_retried(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults += [
        Fault("status", "/api/models/", times=2, status=500),
        Fault("reset", SHARD, times=1),
        Fault("status", "config.json", times=1, status=502),
    ]
    result = fetch(hub.source, "--max-attempts", "4")
    assert result.code == 0, result.err
    assert_complete(result.path)
    assert len(hub.api_calls()) == 3
    assert len(hub.downloads(SHARD)) == 2
    assert "HTTP 500" in result.err
    assert "retrying" in result.err


def test_read_timeouts_are_retried(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults += [
        Fault("slow", "/api/models/", delay=1.5),  # no headers in time
        Fault("stall", SHARD, delay=3.0, fraction=0.3),  # body stops mid-way
    ]
    result = fetch(hub.source, "--read-timeout", "0.5")
    assert result.code == 0, result.err
    assert (result.path / SHARD).read_bytes() == NEEDED[SHARD]
    assert len(hub.api_calls()) == 2
    assert "range" in hub.downloads(SHARD)[-1].headers
    assert "Timeout" in result.err


def test_429_waits_for_retry_after(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults.append(Fault("status", "/api/models/", status=429, headers={"Retry-After": "1"}))
    result = fetch(hub.source)  # backoff alone would wait ~0.01 s
    assert result.code == 0, result.err
    first, second = hub.api_calls()[:2]
    assert second.at - first.at >= 0.95
    assert "retrying in 1.0s" in result.err


def test_gives_up_with_exit_code_7_after_max_attempts(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults.append(Fault("status", "/api/models/", times=-1, status=503))
    result = fetch(hub.source, "--max-attempts", "3")
    assert result.code == ExitCode.NETWORK == 7
    assert len(hub.api_calls()) == 3
    assert "gave up after 3 attempts" in result.err
    assert "HTTP 503" in result.err
    assert result.out == ""  # no path printed: the main container must not start


def test_unreachable_hub_falls_back_to_a_complete_cache(hub: HubServer, fetch: Fetcher) -> None:
    assert fetch(hub.source).code == 0
    hub.faults.append(Fault("reset", "/api/models/", times=-1))
    result = fetch(hub.source)
    assert result.code == 0, result.err
    assert "using it" in result.err


# --- checksums ---------------------------------------------------------------------------------------


def test_corrupt_download_is_retried_then_exit_code_5_and_deleted(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults.append(Fault("corrupt", SHARD, times=-1))
    result = fetch(hub.source, "--checksum-attempts", "3")
    assert result.code == ExitCode.CHECKSUM == 5
    assert len(hub.downloads(SHARD)) == 3
    target = fetch.cache / "acme--tiny" / "main"
    assert not (target / SHARD).exists()
    assert not (target / ".autoglm-fetch/partial" / f"{SHARD}.incomplete").exists()
    assert f"{SHARD} failed verification 3 times (sha256 " in result.err
    assert result.out == ""


def test_one_corrupt_download_is_repaired_by_the_retry(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults.append(Fault("corrupt", SHARD, times=1))
    result = fetch(hub.source)
    assert result.code == 0, result.err
    assert (result.path / SHARD).read_bytes() == NEEDED[SHARD]


def test_small_files_are_checked_against_their_git_blob_id(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults.append(Fault("corrupt", "config.json", times=-1))
    result = fetch(hub.source, "--checksum-attempts", "2")
    assert result.code == ExitCode.CHECKSUM
    assert "config.json failed verification 2 times (git blob id" in result.err


def test_wrong_digest_in_metadata_fails_too(hub: HubServer, fetch: Fetcher) -> None:
    hub.listed_sha256[SHARD] = hashlib.sha256(b"something else").hexdigest()
    assert fetch(hub.source, "--checksum-attempts", "1").code == ExitCode.CHECKSUM


def test_mirror_without_lfs_metadata_uses_x_linked_etag(hub: HubServer, fetch: Fetcher) -> None:
    hub.lfs_metadata = False
    hub.faults.append(Fault("corrupt", SHARD, times=-1))
    assert fetch(hub.source, "--checksum-attempts", "1").code == ExitCode.CHECKSUM
    hub.faults.clear()
    assert fetch(hub.source).code == 0


# --- auth and not found ---------------------------------------------------------------------------------


def test_private_repo_without_token_says_to_set_one(hub: HubServer, fetch: Fetcher) -> None:
    hub.valid_tokens = {CANARY}
    result = fetch(hub.source)
    assert result.code == ExitCode.AUTH == 3
    assert "no token was given" in result.err
    assert "HF_TOKEN or --token-file" in result.err


def test_token_from_env_or_file_is_sent_and_rejected_token_is_explained(
    hub: HubServer, fetch: Fetcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub.valid_tokens = {CANARY}
    monkeypatch.setenv("HF_TOKEN", CANARY)
    assert fetch(hub.source).code == 0
    assert {r.headers.get("authorization") for r in hub.requests} == {f"Bearer {CANARY}"}
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text("hf_wrong_token_abcdef\n")
    result = fetch(hub.source, "--token-file", str(token_file), "--verify")
    assert result.code == ExitCode.AUTH
    assert "token was rejected" in result.err
    assert "update the Secret" in result.err


def test_gated_repo_without_access_says_to_accept_the_conditions(
    hub: HubServer, fetch: Fetcher, monkeypatch
) -> None:
    hub.gated_denied = {CANARY}
    monkeypatch.setenv("HF_TOKEN", CANARY)
    result = fetch(hub.source)
    assert result.code == ExitCode.AUTH
    assert "gated repo" in result.err
    assert "accept the conditions" in result.err


def test_plain_403_on_a_file_is_an_auth_error(hub: HubServer, fetch: Fetcher) -> None:
    hub.faults.append(Fault("status", SHARD, status=403, times=-1))
    result = fetch(hub.source)
    assert result.code == ExitCode.AUTH
    assert "HTTP 403" in result.err
    assert SHARD in result.err


def test_wrong_repo_revision_or_missing_file_exit_4(hub: HubServer, fetch: Fetcher) -> None:
    repo = fetch(hub.base + "/acme/nope")
    assert repo.code == ExitCode.NOT_FOUND == 4
    assert "repository acme/nope not found" in repo.err
    rev = fetch(hub.source, "--revision", "v9.9")
    assert rev.code == ExitCode.NOT_FOUND
    assert "revision 'v9.9' not found in acme/tiny" in rev.err
    hub.faults.append(Fault("status", SHARD, status=404, times=-1, headers={"X-Error-Code": "EntryNotFound"}))
    missing = fetch(hub.source)
    assert missing.code == ExitCode.NOT_FOUND
    assert "has not synced" in missing.err


def test_file_names_escaping_the_folder_are_refused(online: None, fetch: Fetcher) -> None:
    with HubServer({**NEEDED, "../../evil.json": b"{}"}) as hub:
        result = fetch(hub.source)
    assert result.code == ExitCode.NETWORK
    assert "unsafe file names" in result.err
    assert not (fetch.cache / "evil.json").exists()
    assert not (fetch.cache.parent / "evil.json").exists()


def test_usage_errors_exit_2(online: None, fetch: Fetcher, tmp_path: Path) -> None:
    assert fetch("pvc://claim/path").code == ExitCode.USAGE == 2
    assert "nothing to fetch" in fetch("pvc://claim/path").err
    missing = fetch("acme/tiny", "--token-file", str(tmp_path / "absent"))
    assert missing.code == ExitCode.USAGE
    assert "is the Secret" in missing.err
    assert fetch("acme/tiny", "--revision", "../../etc").code == ExitCode.USAGE


# --- disk --------------------------------------------------------------------------------------------


def test_not_enough_space_fails_before_downloading(hub: HubServer, fetch: Fetcher, monkeypatch) -> None:
    monkeypatch.setattr("shutil.disk_usage", lambda p: os.statvfs_result((0,) * 10) and _Usage(free=1000))
    result = fetch(hub.source)
    assert result.code == ExitCode.DISK == 6
    assert "not enough space" in result.err
    assert "Enlarge" in result.err
    assert hub.downloads(SHARD) == []


class _Usage:
    def __init__(self, free: int) -> None:
        self.total, self.used, self.free = 10**12, 10**12 - free, free


def test_disk_full_while_writing_exits_6_and_keeps_the_partial_file(
    hub: HubServer, fetch: Fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = open

    class FullDisk:
        def __init__(self, f, budget: int) -> None:
            self.f, self.budget = f, budget

        def write(self, data: bytes) -> int:
            if len(data) > self.budget:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.budget -= len(data)
            return self.f.write(data)

        def __getattr__(self, name: str):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f, 100_000) if str(path).endswith(f"{SHARD}.incomplete") and "b" in mode else f

    monkeypatch.setattr(download, "open", fake_open, raising=False)
    result = fetch(hub.source, "--workers", "1")
    assert result.code == ExitCode.DISK
    assert "disk full while writing" in result.err
    assert "Enlarge the cache PVC" in result.err
    assert len(hub.downloads(SHARD)) == 1  # not retried: retrying cannot make space


# --- offline -----------------------------------------------------------------------------------------


def test_offline_succeeds_from_a_complete_cache_without_any_server(
    online: None, fetch: Fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HubServer(REPO_FILES) as hub:
        source = hub.source
        path = fetch(source).path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone; the env alone selects offline mode
    result = fetch(source)
    assert result.code == 0, result.err
    assert result.path == path
    assert "offline: " in result.err
    assert "is complete (8 files" in result.err


def test_offline_with_incomplete_cache_exits_8_naming_the_problem(online: None, fetch: Fetcher) -> None:
    with HubServer(REPO_FILES) as hub:
        source = hub.source
        empty = fetch(source, "--offline")
        assert empty.code == ExitCode.OFFLINE_INCOMPLETE == 8
        assert "holds no complete download" in empty.err
        path = fetch(source).path
    with open(path / SHARD, "r+b") as f:
        f.truncate(10)
    result = fetch(source, "--offline")
    assert result.code == ExitCode.OFFLINE_INCOMPLETE
    assert f"{SHARD} is truncated or changed (10 bytes" in result.err


# --- secrets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    ["ok", "rejected", "gated", "server-errors", "checksum", "cdn-redirect"],
)
def test_token_never_appears_in_any_output(
    hub: HubServer, fetch: Fetcher, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    monkeypatch.setenv("HF_TOKEN", CANARY)
    hub.valid_tokens = {CANARY}
    if scenario == "rejected":
        hub.valid_tokens = {"another"}
    if scenario == "gated":
        hub.gated_denied = {CANARY}
    if scenario == "server-errors":
        hub.faults.append(Fault("status", SHARD, times=-1, status=500))
    if scenario == "checksum":
        hub.faults.append(Fault("corrupt", SHARD, times=-1))
    cdn = None
    if scenario == "cdn-redirect":
        cdn = HubServer(REPO_FILES, name="cdn").__enter__()
        hub.redirect_lfs_to = cdn
    try:
        result = fetch(hub.source, "--log-level", "DEBUG", "--log-format", "json")
    finally:
        if cdn is not None:
            cdn.__exit__(None, None, None)
    assert any(r.headers.get("authorization") == f"Bearer {CANARY}" for r in hub.requests)  # it was used
    assert CANARY not in result.out
    assert CANARY not in result.err
    if scenario == "cdn-redirect":
        assert result.code == 0, result.err
        assert cdn is not None
        assert cdn.downloads(SHARD)
        assert all("authorization" not in r.headers for r in cdn.requests)  # not leaked to another host
