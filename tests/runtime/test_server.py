"""End to end: the real CLI serves SmolLM2 over HTTP; the official `openai` client talks to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(model: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AUTOGLM_PORT": str(port), "AUTOGLM_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoglm_runtime.cli",
            "serve",
            "--model",
            str(model),
            "--torch-threads",
            "2",
            *flags,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[str], base: str) -> list[int]:
    """Poll until /readyz is 200; returns the /healthz codes seen meanwhile."""
    health: list[int] = []
    for _ in range(1200):
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            health.append(httpx.get(f"{base}/healthz").status_code)
            if httpx.get(f"{base}/readyz").status_code == 200:
                return health
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server never became ready")


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir: Path) -> Iterator[str]:
    proc, base = start(smollm2_dir, "--max-new-tokens", "64", "--log-format", "text")
    try:
        assert set(wait_ready(proc, base)) <= {200}
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_openai_client_chat_answers_paris(smollm2_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{smollm2_server}/v1", api_key="unused")
    [model] = [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30,
        temperature=0,
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_openai_client_streams(smollm2_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{smollm2_server}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2
    assert "Paris" in "".join(pieces)


def test_openai_client_errors(smollm2_server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{smollm2_server}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.code == "model_not_found"


def test_load_failure_after_listening_exits_nonzero(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    proc, _ = start(broken, "--log-format", "text")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("autoglm-runtime serve: cannot load model")
