"""Start and stop the servers under test as child processes, under a memory cap.

Every server gets the same thread count and runs offline; anything fed hostile or large inputs
runs under ``RLIMIT_AS`` (``ulimit -v``), because one runaway prompt once exhausted this machine —
except where the server may use CUDA, which reserves far more virtual address space than any cap
of host memory (:func:`address_space_cap`).
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# `transformers serve` may run from another virtualenv: serving a GLM-4V it builds a video processor
# that needs torchvision, which does not import beside the CPU torch build this project installs
# (torch 2.14.1 + torchvision 0.29.1 in a separate venv do; see docs/benchmarks.md).
PEER_BIN = Path(os.environ.get("AUTOGLM_BENCH_PEER_BIN") or VENV_BIN)
DEFAULT_MEMORY_CAP = 16 * 1024**3
# Where an NVIDIA driver shows itself without importing torch (or creating a CUDA context):
# Linux device nodes and driver, WSL's GPU paravirtualisation device.
NVIDIA_MARKERS = ("dev/nvidiactl", "dev/nvidia0", "proc/driver/nvidia/version", "dev/dxg")


def cuda_possible(env: Mapping[str, str] | None = None, root: Path = Path("/")) -> bool:
    """Whether a process started with ``env`` may use CUDA: an NVIDIA driver is on this machine and
    ``CUDA_VISIBLE_DEVICES`` does not hide every GPU. Cheap and torch-free (no CUDA context)."""
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any((root / marker).exists() for marker in NVIDIA_MARKERS)


def address_space_cap(requested: int | None, cuda: bool) -> int | None:
    """The ``RLIMIT_AS`` to set on a server, or None for none. Never with CUDA: the driver reserves
    tens to hundreds of GiB of virtual address space (unified addressing) at its first call, far
    above any cap of host memory, and the server would fail at start. None or a negative request
    (``resource.RLIM_INFINITY``) means no cap."""
    if requested is None or requested < 0 or cuda:
        return None
    return requested


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
    memory_cap_bytes: int = DEFAULT_MEMORY_CAP  # RLIMIT_AS without CUDA (address_space_cap)
    env: dict[str, str] = field(default_factory=dict)
    # Start by forking this process, which imported the runtime already, and calling its CLI with
    # argv[len(runtime_argv()):] in the child, instead of a fresh interpreter (the CPU form of the
    # GPU check: the same server in a second instead of a fresh interpreter's imports). Never with
    # CUDA: a CUDA context does not survive a fork.
    fork: bool = False

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


class ForkedProcess:
    """What :class:`RunningServer` uses of ``subprocess.Popen``, for a child made by ``os.fork``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


def _forked_runtime(args: list[str], env: dict[str, str], log_fd: int, limit: Callable[[], None]) -> NoReturn:
    """In a forked child: the runtime's CLI with ``args``, output to ``log_fd``, in ``env``; never returns."""
    code = 1
    try:
        limit()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Python-level streams onto the log too (a caller such as pytest may have replaced them).
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - until os._exit
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        os.chdir(REPO)
        from autoglm_runtime.cli import main

        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child reports and exits, never returns
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class RunningServer:
    def __init__(self, spec: ServerSpec, log_dir: Path) -> None:
        self.spec = spec
        env = offline_env()
        env.update(spec.env)
        cuda = cuda_possible(env)
        if spec.fork and cuda:
            raise RuntimeError(f"{spec.name}: a server that may use CUDA cannot be forked")
        cap = address_space_cap(spec.memory_cap_bytes, cuda)
        self.memory_cap_bytes = cap
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{spec.name}.log"
        self._log = self.log_path.open("wb")

        def limit() -> None:  # runs in the child before exec
            if cap is not None:
                resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            os.setsid()
            _die_with_parent()

        self.started = time.perf_counter()
        self.proc: subprocess.Popen[bytes] | ForkedProcess
        if spec.fork:
            args = spec.argv[len(runtime_argv()) :]
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _forked_runtime(args, env, self._log.fileno(), limit)
            self.proc = ForkedProcess(pid)
        else:
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
