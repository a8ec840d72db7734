"""How benchmarks.servers starts a server: the address-space cap only where CUDA cannot be used
(CUDA reserves far more virtual memory than any host-memory cap), and the forked start the CPU form
of the GPU check uses."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest

from benchmarks import servers


def test_cuda_is_possible_only_with_an_nvidia_driver_and_a_visible_gpu(tmp_path: Path) -> None:
    assert not servers.cuda_possible({}, root=tmp_path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidiactl").touch()
    assert servers.cuda_possible({}, root=tmp_path)
    assert servers.cuda_possible({"CUDA_VISIBLE_DEVICES": "0"}, root=tmp_path)
    assert not servers.cuda_possible({"CUDA_VISIBLE_DEVICES": ""}, root=tmp_path)
    assert not servers.cuda_possible({"CUDA_VISIBLE_DEVICES": "-1"}, root=tmp_path)
    wsl = tmp_path / "wsl"
    (wsl / "dev").mkdir(parents=True)
    (wsl / "dev" / "dxg").touch()
    assert servers.cuda_possible({}, root=wsl)


def test_the_address_space_cap_is_never_set_for_a_server_that_may_use_cuda() -> None:
    cap = servers.DEFAULT_MEMORY_CAP
    assert servers.address_space_cap(cap, cuda=False) == cap
    assert servers.address_space_cap(cap, cuda=True) is None
    assert servers.address_space_cap(-1, cuda=False) is None  # resource.RLIM_INFINITY: none asked
    assert servers.address_space_cap(None, cuda=False) is None


def _limit_seen_by(spec: servers.ServerSpec, tmp_path: Path) -> str:
    server = servers.RunningServer(spec, tmp_path)
    try:
        assert server.proc.wait(timeout=60) == 0, server.log_tail()
        return server.log_tail().strip().splitlines()[-1]
    finally:
        server.stop()


@pytest.mark.parametrize("cuda", [False, True])
def test_a_server_process_gets_the_cap_only_without_cuda(
    cuda: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "cuda_possible", lambda env=None, root=None: cuda)
    argv = [sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"]
    spec = servers.ServerSpec("limit", argv, port=0, ready_path="/", backend="autoglm")
    seen = int(_limit_seen_by(spec, tmp_path))
    if cuda:
        assert seen == resource.getrlimit(resource.RLIMIT_AS)[0]  # this process's, inherited as is
    else:
        assert seen == servers.DEFAULT_MEMORY_CAP


def test_a_forked_server_runs_the_runtime_cli_in_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "cuda_possible", lambda env=None, root=None: False)
    spec = servers.ServerSpec("forked", [*servers.runtime_argv(), "--help"], port=0, ready_path="/",
                              backend="autoglm", fork=True)  # fmt: skip
    server = servers.RunningServer(spec, tmp_path)
    try:
        assert isinstance(server.proc, servers.ForkedProcess)
        assert server.proc.wait(timeout=60) == 0
        assert "serve" in server.log_path.read_text()
    finally:
        server.stop()


def test_a_server_that_may_use_cuda_is_never_forked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "cuda_possible", lambda env=None, root=None: True)
    spec = servers.ServerSpec("forked", [*servers.runtime_argv(), "--help"], port=0, ready_path="/",
                              backend="autoglm", fork=True)  # fmt: skip
    with pytest.raises(RuntimeError, match="cannot be forked"):
        servers.RunningServer(spec, tmp_path)
