"""Where a server's time goes: py-spy samples a running server, and the samples are grouped by the
engine step they fall in (model forward in prefill/decode, KV-cache merge/select, sampling,
detokenization) or by thread (the event loop: HTTP, validation, tokenization, SSE).

Used by :mod:`benchmarks.runtime_bench` when a throughput target is missed, to write down the
measured cause instead of a guess.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Innermost match wins: a sample inside ModelRunner.decode → model forward counts as "decode".
ENGINE_PHASES = {
    "prefill": "prefill (model forward)",
    "decode": "decode step (model forward)",
    "merge": "KV cache merge (rows join)",
    "select": "KV cache select (rows leave)",
    "_finish_completed": "KV cache select (rows leave)",
    "_sweep": "KV cache select (rows leave)",
    "sample": "sampling",
    "decode_text": "detokenize",
    "_append": "stream bookkeeping",
    "_loop": "engine loop (other)",
}


def _frame(frame: str) -> tuple[str, str]:
    """``"decode (/x/engine.py:244)"`` → ``("decode", "/x/engine.py")``."""
    name, _, rest = frame.partition(" (")
    return name, rest.rsplit(":", 1)[0]


def py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.is_file() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, out: Path, rate: int = 50) -> Iterator[Path | None]:
    """Sample ``pid`` (all threads, native frames off, not pausing it) while the block runs."""
    exe = py_spy()
    if exe is None:
        yield None
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--rate", str(rate),
         "--nonblocking", "--threads"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def classify(stack: str) -> str:
    frames = [_frame(f) for f in stack.split(";")]
    for name, path in reversed(frames):
        method = name.rsplit(".", 1)[-1]  # py-spy names methods "Class.method"
        if "autoglm_runtime/engine/" in path and method in ENGINE_PHASES:
            return ENGINE_PHASES[method]
    paths = " ".join(p for _, p in frames)
    if "autoglm_runtime/engine/" in paths:
        return "engine loop (other)"
    if any(k in paths for k in ("asyncio", "uvicorn", "starlette", "fastapi", "autoglm_runtime/serving/")):
        return "event loop (HTTP, tokenization, SSE)"
    return "other threads"


def summarize(raw: Path) -> dict[str, Any]:
    """Share of samples per phase, plus the top leaf functions inside the model forward."""
    phases: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        phase = classify(stack)
        phases[phase] += n
        leaves[stack.split(";")[-1].split(" (")[0]] += n
    return {
        "samples": total,
        "phases": {k: v / total for k, v in phases.most_common()} if total else {},
        "top_leaf_functions": {k: v / total for k, v in leaves.most_common(8)} if total else {},
    }
