"""Start and stop the servers under test as child processes, under a memory cap.

Every server gets the same thread count and runs offline; anything fed hostile or large inputs
runs under ``RLIMIT_AS`` (``ulimit -v``), because one runaway prompt once exhausted this machine.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# `transformers serve` may run from another virtualenv: serving a GLM-4V it builds a video processor
# that needs torchvision, which does not import beside the CPU torch build this project installs
# (torch 2.14.1 + torchvision 0.29.1 in a separate venv do; see docs/benchmarks.md).
PEER_BIN = Path(os.environ.get("AUTOGLM_BENCH_PEER_BIN") or VENV_BIN)
DEFAULT_MEMORY_CAP = 16 * 1024**3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offline_env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    n = str(threads or os.cpu_count() or 1)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    return env


@dataclass
class ServerSpec:
    """One server to launch: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    backend: str  # loadgen backend name (how to force output length)
    model_name: str | None = None  # the `model` field requests must carry (None: leave it out)
    memory_cap_bytes: int = DEFAULT_MEMORY_CAP
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def runtime_argv() -> list[str]:
    """``autoglm-runtime``: the console script beside this interpreter, or the module when the runtime
    was installed elsewhere (``make gpu-check`` installs it with ``pip --target`` on a GPU node)."""
    script = VENV_BIN / "autoglm-runtime"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "autoglm_runtime.cli"]


def autoglm_spec(
    name: str,
    model_dir: Path,
    *,
    quantization: str = "none",
    max_batch_size: int = 16,
    extra: Sequence[str] = (),
) -> ServerSpec:
    port = free_port()
    argv = [
        *runtime_argv(),
        "serve",
        "--model",
        str(model_dir),
        "--quantization",
        quantization,
        "--max-batch-size",
        str(max_batch_size),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-format",
        "text",
        "--log-level",
        "WARNING",
        *extra,
    ]
    return ServerSpec(name, argv, port, "/readyz", backend="autoglm")


HF_CB_FLAGS = [
    "--continuous-batching",
    "--cb-block-size",
    "32",
    "--cb-num-blocks",
    "512",
    "--cb-max-batch-tokens",
    "1024",
]


def hf_serve_spec(
    name: str, model_dir: Path, *, continuous_batching: bool = True, extra: Sequence[str] = ()
) -> ServerSpec:
    """``transformers serve`` on a local folder; on CPU its continuous batching needs explicit KV sizes."""
    port = free_port()
    argv = [
        str(PEER_BIN / "transformers"),
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if continuous_batching:
        argv += HF_CB_FLAGS
    argv += list(extra)
    # /v1/models lists the folder path; requests may leave `model` out when one model is forced.
    return ServerSpec(name, argv, port, "/v1/models", backend="hf-serve")


def _die_with_parent() -> None:
    """Linux: the server gets SIGKILL when the benchmark dies (a killed `make bench` leaves no orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class RunningServer:
    def __init__(self, spec: ServerSpec, log_dir: Path) -> None:
        self.spec = spec
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{spec.name}.log"
        self._log = self.log_path.open("wb")
        cap = spec.memory_cap_bytes

        def limit() -> None:  # runs in the child before exec
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            os.setsid()
            _die_with_parent()

        env = offline_env()
        env.update(spec.env)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            spec.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=limit
        )
        self.ready_s: float | None = None

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.spec.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.spec.name} exited with {self.proc.returncode} before it was ready; "
                        f"last log lines:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.spec.ready_path).status_code == 200:
                        self.ready_s = time.perf_counter() - self.started
                        return self.ready_s
                time.sleep(0.5)
        raise TimeoutError(f"{self.spec.name} not ready after {timeout_s:.0f}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _procs(self) -> list[psutil.Process]:
        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        total = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def idle_cpu_fraction(self, seconds: float = 2.0) -> float:
        """CPU used while no request is in flight (a busy-polling server would disturb its neighbours)."""
        before = self.cpu_seconds()
        time.sleep(seconds)
        return (self.cpu_seconds() - before) / seconds

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


@contextlib.contextmanager
def launched(
    specs: Sequence[ServerSpec], log_dir: Path, timeout_s: float = 300.0
) -> Iterator[list[RunningServer]]:
    """Start all servers (they load in parallel), wait until each is ready, stop them all on exit."""
    servers: list[RunningServer] = []
    try:
        for spec in specs:
            servers.append(RunningServer(spec, log_dir))
        for s in servers:
            s.wait_ready(timeout_s)
        yield servers
    finally:
        for s in servers:
            s.stop()
