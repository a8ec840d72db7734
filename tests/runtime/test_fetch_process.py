"""``autoglm-runtime fetch`` as the init container runs it: separate processes sharing one cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.runtime.fetchrepo import FAST, NEEDED, REPO_FILES, SHARD
from tests.runtime.hubserver import Fault, HubServer

REPO = Path(__file__).resolve().parents[2]
CANARY = "hf_CANARYprocessToken0987654321"

# Runs the CLI and reports whether torch or transformers got imported along the way.
PROBE = (
    "import sys\n"
    "from autoglm_runtime.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer(REPO_FILES) as server:
        yield server


def start(hub: HubServer, cache: Path, *extra: str, token: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "AUTOGLM_"))}
    env["HF_HUB_OFFLINE"] = "0"  # only 127.0.0.1 is contacted
    if token:
        env["HF_TOKEN"] = token
    argv = ["fetch", "--model", hub.source, "--revision", "main", "--cache-dir", str(cache), *FAST, *extra]
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(stream: IO[str], text: str) -> list[str]:
    """Lines of ``stream`` up to the first containing ``text`` (a reader thread, so a hang cannot block)."""
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in stream:
            seen.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(60), seen
    return seen


@pytest.mark.slow
def test_replicas_sharing_a_cache_download_each_file_once(hub: HubServer, tmp_path: Path) -> None:
    hold = Fault("hold", SHARD)  # the first pod's shard download stalls until the second pod waits
    hub.faults.append(hold)
    cache = tmp_path / "pvc"
    slow = ("--read-timeout", "90", "--progress-interval", "0.5")
    first = start(hub, cache, *slow)
    deadline = time.monotonic() + 60
    while not hub.downloads(SHARD):  # the first holds the lock once it downloads
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = start(hub, cache, *slow)
    assert second.stderr is not None
    early = wait_for_line(second.stderr, "another fetch is downloading this revision")
    hold.release.set()
    out1, err1 = first.communicate(timeout=120)
    out2, rest = second.communicate(timeout=120)
    err2 = "".join(early) + rest
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert out1 == out2 == f"{cache}/acme--tiny/main\n"
    assert "(0 downloaded now)" in err2
    for name in NEEDED:
        assert len(hub.downloads(name)) == 1, name
        assert (cache / "acme--tiny/main" / name).read_bytes() == NEEDED[name]


@pytest.mark.slow
def test_init_container_logs_json_without_token_and_imports_no_torch(hub: HubServer, tmp_path: Path) -> None:
    hub.valid_tokens = {CANARY}
    proc = start(
        hub,
        tmp_path / "pvc",
        "--log-format",
        "json",
        "--output-file",
        str(tmp_path / "path.txt"),
        token=CANARY,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "HEAVY=\n" in err  # no torch in the init container
    lines = [line for line in err.splitlines() if line.startswith("{")]
    assert lines
    assert all(json.loads(line)["logger"] == "autoglm_runtime.fetch" for line in lines)
    assert CANARY not in out + err
    assert (tmp_path / "path.txt").read_text() == out == f"{tmp_path}/pvc/acme--tiny/main\n"

    hub.valid_tokens = {"rotated"}
    denied = start(hub, tmp_path / "other", "--log-format", "json", token=CANARY)
    out, err = denied.communicate(timeout=120)
    assert denied.returncode == 3
    assert out == ""
    assert CANARY not in err
    assert "token was rejected" in err
