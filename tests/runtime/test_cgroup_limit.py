"""The container memory limit found the JVM way: own cgroup from /proc, smallest limit up to the mount."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autoglm_runtime.memory import CgroupLocation, cgroup_memory_limit, resolve_memory_cgroup

GIB = 2**30
V1_UNLIMITED = "9223372036854771712"
# /proc/self/cgroup of a cgroup-v1 host, memory controller on hierarchy 4 (systemd one named).
V1_OTHERS = "9:name=systemd:/\n8:pids:/\n1:cpu,cpuacct:/\n"


class Host:
    """A fake ``/sys/fs/cgroup`` plus ``/proc/self/{cgroup,mountinfo}`` below ``tmp_path``."""

    def __init__(self, tmp_path: Path) -> None:
        self.cgroup = tmp_path / "sys" / "fs" / "cgroup"
        self.proc_cgroup = tmp_path / "proc" / "cgroup"
        self.mountinfo = tmp_path / "proc" / "mountinfo"
        self.proc_cgroup.parent.mkdir(parents=True)
        self.mounts: list[str] = [f"24 1 0:22 / {tmp_path / 'sys'} rw,relatime - sysfs sysfs rw"]

    def mount_v2(self, mount_point: str = "", root: str = "/") -> None:
        self.mounts.append(
            f"30 24 0:26 {root} {self.cgroup / mount_point} rw,nosuid,nodev,noexec,relatime shared:4"
            " - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot"
        )

    def mount_v1_memory(self, root: str = "/") -> None:
        self.mounts.append(
            f"31 24 0:27 / {self.cgroup} rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755"
        )
        self.mounts.append(
            f"35 31 0:32 {root} {self.cgroup / 'memory'} rw,nosuid,nodev,noexec,relatime shared:13"
            " - cgroup cgroup rw,memory"
        )

    def limit(self, rel: str, value: int | str) -> None:
        path = self.cgroup / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")

    def proc(self, cgroup: str) -> int | None:
        """Write the proc files and return ``cgroup_memory_limit`` as seen through them."""
        self.proc_cgroup.write_text(cgroup)
        self.mountinfo.write_text("\n".join(self.mounts) + "\n")
        return cgroup_memory_limit(self.cgroup, proc_self_cgroup=self.proc_cgroup, mountinfo=self.mountinfo)

    def location(self) -> CgroupLocation | None:
        return resolve_memory_cgroup(self.proc_cgroup, self.mountinfo)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_v2_nested_smallest_of_pod_and_container_wins(host: Host) -> None:
    host.mount_v2()
    host.limit("kubepods/memory.max", "max")
    host.limit("kubepods/pod1/memory.max", 4 * GIB)
    host.limit("kubepods/pod1/ctr/memory.max", 3 * GIB)
    assert host.proc("0::/kubepods/pod1/ctr\n") == 3 * GIB
    assert host.location() == CgroupLocation(host.cgroup / "kubepods/pod1/ctr", host.cgroup, "memory.max")


def test_v2_parent_smaller_than_child_wins(host: Host) -> None:
    host.mount_v2()
    host.limit("kubepods/pod1/memory.max", 1 * GIB)
    host.limit("kubepods/pod1/ctr/memory.max", 4 * GIB)
    assert host.proc("0::/kubepods/pod1/ctr\n") == 1 * GIB


def test_v2_cgroup_namespace_reads_the_mount_point(host: Host) -> None:
    # Inside a cgroup namespace the process sees "/"; mountinfo's root names the real cgroup.
    host.mount_v2(root="/kubepods/pod1/ctr")
    host.limit("memory.max", 2 * GIB)
    assert host.proc("0::/\n") == 2 * GIB
    assert host.location() == CgroupLocation(host.cgroup, host.cgroup, "memory.max")


def test_v2_max_everywhere_is_no_limit(host: Host) -> None:
    host.mount_v2()
    for rel in ("", "kubepods/", "kubepods/pod1/", "kubepods/pod1/ctr/"):
        host.limit(rel + "memory.max", "max")
    assert host.proc("0::/kubepods/pod1/ctr\n") is None


def test_walk_stops_at_the_mount_point(host: Host) -> None:
    host.mount_v2(mount_point="unified")
    host.limit("memory.max", 1 * GIB)  # above the mount point: not part of this hierarchy
    host.limit("unified/a/memory.max", 3 * GIB)
    assert host.proc("0::/a/b\n") == 3 * GIB


def test_v1_nested(host: Host) -> None:
    host.mount_v1_memory()
    host.limit("memory/memory.limit_in_bytes", V1_UNLIMITED)
    host.limit("memory/kubepods/pod1/memory.limit_in_bytes", 8 * GIB)
    host.limit("memory/kubepods/pod1/ctr/memory.limit_in_bytes", 2 * GIB)
    assert host.proc(V1_OTHERS + "4:memory:/kubepods/pod1/ctr\n0::/\n") == 2 * GIB
    assert host.location() == CgroupLocation(
        host.cgroup / "memory/kubepods/pod1/ctr", host.cgroup / "memory", "memory.limit_in_bytes"
    )


def test_v1_sentinel_everywhere_is_no_limit(host: Host) -> None:
    host.mount_v1_memory()
    for rel in ("memory/", "memory/kubepods/", "memory/kubepods/ctr/"):
        host.limit(rel + "memory.limit_in_bytes", V1_UNLIMITED)
    assert host.proc(V1_OTHERS + "4:memory:/kubepods/ctr\n") is None


def test_v1_cgroup_namespace(host: Host) -> None:
    host.mount_v1_memory(root="/kubepods/pod1/ctr")
    host.limit("memory/memory.limit_in_bytes", 2 * GIB)
    assert host.proc(V1_OTHERS + "4:memory:/\n") == 2 * GIB


def test_hybrid_prefers_the_v1_memory_controller(host: Host) -> None:
    host.mount_v1_memory()
    host.mount_v2(mount_point="unified")
    host.limit("unified/user.slice/memory.max", 5 * GIB)  # decoy: no memory controller in unified
    host.limit("memory/user.slice/memory.limit_in_bytes", 1 * GIB)
    assert host.proc(V1_OTHERS + "4:memory:/user.slice\n0::/user.slice\n") == 1 * GIB


@pytest.mark.parametrize(
    ("mount_root", "cgroup_path", "expected"),
    [
        ("/", "/kubepods/ctr", "memory/kubepods/ctr"),  # whole hierarchy mounted
        ("/", "/", "memory"),
        ("/docker/abc", "/docker/abc", "memory"),  # own cgroup bind-mounted (no namespace)
        ("/docker/abc", "/docker/abc/sub", "memory/sub"),  # below the mount root
        ("/kubepods/pod1", "/kubepods/pod10/ctr", "memory"),  # not below it (component-wise)
        ("/kubepods/pod1/ctr", "/", "memory"),  # namespace: fall back to the mount point
        ("/", "/a/../../etc", "memory"),  # never leave the mount
    ],
)
def test_jvm_mapping_of_cgroup_path_onto_mount(
    host: Host, mount_root: str, cgroup_path: str, expected: str
) -> None:
    host.mount_v1_memory(root=mount_root)
    host.proc(f"4:memory:{cgroup_path}\n")
    location = host.location()
    assert location is not None
    assert location.directory == host.cgroup / expected


def test_escaped_mount_point(tmp_path: Path) -> None:
    host = Host(tmp_path / "with space")
    host.mount_v2()
    host.mounts[-1] = host.mounts[-1].replace("with space", "with\\040space")
    host.limit("ctr/memory.max", 3 * GIB)
    assert host.proc("0::/ctr\n") == 3 * GIB


def test_missing_proc_files_fall_back_to_the_root(host: Host) -> None:
    host.limit("memory.max", 6 * GIB)
    missing = host.proc_cgroup.parent / "missing"
    assert cgroup_memory_limit(host.cgroup, proc_self_cgroup=missing, mountinfo=missing) == 6 * GIB
    host.limit("memory.max", "max")
    assert cgroup_memory_limit(host.cgroup, proc_self_cgroup=missing, mountinfo=missing) is None


def test_unresolvable_proc_files_fall_back_to_the_root(host: Host) -> None:
    host.limit("memory/memory.limit_in_bytes", 6 * GIB)
    host.mounts.append("garbage line without separator")
    assert host.proc("nonsense\n\x00\n4:memory\n") == 6 * GIB  # no memory line: root-only
    host.mount_v2()
    assert host.proc("4:cpu:/x\n") == 6 * GIB  # no 0:: line and no memory line


def test_explicit_root_without_proc_files_keeps_the_old_rule(host: Host) -> None:
    host.limit("memory.max", 7 * GIB)
    host.limit("nested/memory.max", 1 * GIB)
    assert cgroup_memory_limit(host.cgroup) == 7 * GIB


def test_defaults_never_raise() -> None:
    limit = cgroup_memory_limit()
    assert limit is None or limit > 0


# -- a real nested cgroup -------------------------------------------------------------------------

CHILD_CODE = """
import logging, os, sys
with open(sys.argv[1], "w") as procs:
    procs.write(str(os.getpid()))
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
from autoglm_runtime.memory import cgroup_memory_limit, host_total_memory, plan_device_budget
plan = plan_device_budget(50, 90, gpus=[])
print(cgroup_memory_limit(), plan.cpu_budget_bytes, host_total_memory())
"""


def _own_writable_memory_cgroup() -> CgroupLocation:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to create a child cgroup")
    location = resolve_memory_cgroup()
    if location is None:
        pytest.skip("no memory cgroup named by /proc/self/cgroup and /proc/self/mountinfo")
    if not os.access(location.directory, os.W_OK):
        pytest.skip(f"own memory cgroup {location.directory} is not writable")
    if location.limit_file == "memory.max":
        try:
            enabled = (location.directory / "cgroup.subtree_control").read_text().split()
        except OSError as exc:
            pytest.skip(f"cannot read cgroup.subtree_control: {exc}")
        if "memory" not in enabled:
            pytest.skip(f"memory controller not enabled for children of {location.directory}")
    return location


def _rmdir(path: Path) -> None:
    for _ in range(50):  # the emptied cgroup may take a moment to stop being busy
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    path.rmdir()


def test_real_nested_cgroup_limit_is_seen() -> None:
    location = _own_writable_memory_cgroup()
    ancestors = cgroup_memory_limit()  # this process's own cgroup and everything up to the mount
    child = location.directory / f"autoglm-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a child cgroup in {location.directory}: {exc}")
    try:
        limit_file = child / location.limit_file
        if not limit_file.exists():
            pytest.skip(f"{limit_file} does not exist: memory controller not active there")
        limit_file.write_text(str(2 * GIB))
        result = subprocess.run(
            [sys.executable, "-c", CHILD_CODE, str(child / "cgroup.procs")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # run() waits for the child to exit (and kills it on timeout), so the cgroup is empty
    finally:
        _rmdir(child)
    assert result.returncode == 0, result.stderr
    limit, cpu_budget, host_total = (int(word) for word in result.stdout.split())
    expected = 2 * GIB if ancestors is None else min(2 * GIB, ancestors)
    assert limit == expected
    assert cpu_budget == min(expected, host_total) // 2  # plan_device_budget(50, ...): half the container
    if expected == 2 * GIB:
        assert f"from {limit_file}" in result.stderr
    assert not child.exists()
