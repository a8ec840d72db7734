"""scripts/http-expect.sh: the images smoke's /metrics check, against a body that arrives in pieces.

CI once failed with ``curl: (23) Failed writing body`` although the metric was there: the smoke ran
``curl … | grep -q '^autoglm_'`` under ``pipefail``; grep -q left at its first match, curl's next
write got EPIPE. The server here sends the matching line first, then many small delayed chunks,
which is what a container's port forwarding did. A scan of every script keeps the pattern out."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "http-expect.sh"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

CHUNKS = 40
CHUNK = b"# HELP filler a line that only makes the body longer\n" * 20


class _Chunked(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/missing":
            self.send_error(404)
            return
        first = b"autoglm_requests_total 3\n" if self.path == "/metrics" else b"other_metric 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for piece in [first] + [CHUNK] * CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the old pipeline's curl hangs up early

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Chunked)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_old_pipeline_fails_against_this_server(server: str) -> None:
    """The fixture reproduces the CI failure; otherwise the next test would prove nothing."""
    old = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; curl -fsS {server}/metrics | grep -q '^autoglm_'"],
        capture_output=True, text=True, timeout=60,
    )
    assert old.returncode != 0, old
    assert "(23)" in old.stderr, old


def test_finds_the_metric_in_a_slow_chunked_body(server: str) -> None:
    result = _run(f"{server}/metrics", "^autoglm_", "runtime metrics")
    assert result.returncode == 0, result.stderr


def test_says_which_pattern_is_missing(server: str) -> None:
    result = _run(f"{server}/other", "^autoglm_", "runtime metrics")
    assert result.returncode == 1
    assert "runtime metrics: no line matches '^autoglm_'" in result.stderr


def test_says_when_the_url_fails(server: str) -> None:
    result = _run(f"{server}/missing", "^autoglm_", "runtime metrics")
    assert result.returncode == 1
    assert "runtime metrics: could not read" in result.stderr
    assert "404" in result.stderr


EARLY_READER = re.compile(r"\|\s*(grep\s+(-\w*[qm]|--quiet|--max-count)|head\b|sed\s+-n\s+'?\d+q)")


def test_no_script_pipes_into_an_early_exiting_reader() -> None:
    """Under pipefail, a producer piped into a reader that stops early fails at random."""
    scripts = [*REPO.glob("scripts/*.sh"), REPO / ".ci" / "run", REPO / "Makefile"]
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in scripts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if EARLY_READER.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []
