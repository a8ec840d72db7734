"""Memory budgets that respect the container, not the node.

A pod sees the node's RAM in ``/proc/meminfo`` but is killed at its cgroup limit, so the CPU budget
(accelerate ``max_memory["cpu"]``) is a share of the cgroup limit — the JVM ``MaxRAMPercentage``
idea. GPU budgets are a share of each *visible* device's total memory, and the same share caps the
CUDA caching allocator (``torch.cuda.set_per_process_memory_fraction``). Every CUDA call is guarded:
on a CPU build of torch they raise.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
DEFAULT_MOUNTINFO = Path("/proc/self/mountinfo")
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX rounded to pages); anything at or
# above this is treated as unlimited.
_V1_UNLIMITED = 1 << 60
_V1_LIMIT_FILE = "memory.limit_in_bytes"
_V2_LIMIT_FILE = "memory.max"


@dataclass(frozen=True)
class VisibleGpu:
    index: int
    name: str
    total_bytes: int
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class DeviceBudget:
    """What the loader passes to ``from_pretrained`` and what the log and metrics report."""

    container_limit_bytes: int | None  # None: no cgroup limit found
    host_total_bytes: int
    cpu_budget_bytes: int
    gpus: list[VisibleGpu] = field(default_factory=list)
    gpu_budget_bytes: dict[int, int] = field(default_factory=dict)
    gpu_fraction: float = 1.0

    @property
    def max_memory(self) -> dict[int | str, int]:
        """accelerate's ``max_memory``: only devices that exist (a missing GPU index makes it fail)."""
        budget: dict[int | str, int] = {"cpu": self.cpu_budget_bytes}
        for index, n in self.gpu_budget_bytes.items():
            budget[index] = n
        return budget

    def describe(self) -> str:
        limit = "none" if self.container_limit_bytes is None else _gib(self.container_limit_bytes)
        parts = [f"container limit {limit}", f"cpu budget {_gib(self.cpu_budget_bytes)}"]
        for gpu in self.gpus:
            parts.append(
                f"cuda:{gpu.index} {gpu.name} budget {_gib(self.gpu_budget_bytes[gpu.index])}"
                f" of {_gib(gpu.total_bytes)}"
            )
        return ", ".join(parts)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, NUL in the path
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    text = text.strip() if text is not None else ""
    if text == "max" or not text:
        return None
    try:
        value = int(text)
    except ValueError:
        log.warning("Ignoring unreadable cgroup value %r in %s", text, path)
        return None
    return value if 0 < value < _V1_UNLIMITED else None


class CgroupLocation(NamedTuple):
    """Where this process's memory limit lives: its own cgroup directory and the mount above it."""

    directory: Path  # the process's memory cgroup, as seen through ``mount_point``
    mount_point: Path  # the walk up for a smaller ancestor limit stops here
    limit_file: str  # ``memory.max`` (v2) or ``memory.limit_in_bytes`` (v1)


class _Mount(NamedTuple):
    root: str  # mountinfo's "root" field: the cgroup that ``mount_point`` shows
    mount_point: Path
    fstype: str
    super_options: frozenset[str]


def _unescape(field: str) -> str:  # mountinfo writes " ", tab, newline and "\\" as octal: "\\040"
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _parse_mountinfo(text: str) -> list[_Mount]:
    """``id parent dev root mount-point options [optional...] - fstype source super-options``."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail:
            options = frozenset(tail[2].split(",")) if len(tail) > 2 else frozenset()
            mounts.append(_Mount(_unescape(fields[3]), Path(_unescape(fields[4])), tail[0], options))
    return mounts


def _own_cgroup_paths(text: str) -> tuple[str | None, str | None]:
    """(v1 memory cgroup path, v2 unified cgroup path) from ``/proc/self/cgroup``."""
    v1 = v2 = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def _cgroup_directory(mount_root: str, mount_point: Path, cgroup_path: str) -> Path:
    """Map a ``/proc/self/cgroup`` path onto the mount, as the JVM's cgroup subsystem controllers do.

    * mount root ``/`` (the whole hierarchy is mounted): ``mount_point + cgroup_path``;
    * cgroup path == mount root (the container's own cgroup is bind-mounted): ``mount_point``;
    * cgroup path below the mount root: ``mount_point + the remainder``;
    * anything else, e.g. ``/`` inside a cgroup namespace: ``mount_point``.
    """
    root, path = mount_root.rstrip("/") or "/", cgroup_path.rstrip("/") or "/"
    if root == "/":
        relative = path
    elif path.startswith(root + "/"):
        relative = path[len(root) :]
    else:  # equal to the root, or unrelated to it
        relative = "/"
    parts = [part for part in relative.split("/") if part]
    return mount_point if ".." in parts else mount_point.joinpath(*parts)


def resolve_memory_cgroup(
    proc_self_cgroup: Path | str = DEFAULT_PROC_SELF_CGROUP, mountinfo: Path | str = DEFAULT_MOUNTINFO
) -> CgroupLocation | None:
    """This process's memory cgroup, or None when the proc files do not name a mounted one.

    A v1 ``memory`` controller wins over the v2 ``0::`` line (on hybrid hosts the unified tree has
    no memory controller), as in the JVM.
    """
    cgroup_text, mount_text = _read_text(Path(proc_self_cgroup)), _read_text(Path(mountinfo))
    if cgroup_text is None or mount_text is None:
        return None
    v1_path, v2_path = _own_cgroup_paths(cgroup_text)
    mounts = _parse_mountinfo(mount_text)
    candidates = [
        (v1_path, _V1_LIMIT_FILE, lambda m: m.fstype == "cgroup" and "memory" in m.super_options),
        (v2_path, _V2_LIMIT_FILE, lambda m: m.fstype == "cgroup2"),
    ]
    for cgroup_path, limit_file, is_match in candidates:
        mount = next((m for m in mounts if is_match(m)), None)
        if cgroup_path is not None and mount is not None:
            directory = _cgroup_directory(mount.root, mount.mount_point, cgroup_path)
            return CgroupLocation(directory, mount.mount_point, limit_file)
    return None


def _smallest_limit(location: CgroupLocation) -> int | None:
    """The smallest limit from the process's cgroup up to (and including) the mount point."""
    best: tuple[int, Path] | None = None
    directory = location.directory
    while True:
        path = directory / location.limit_file
        value = _read_int(path)
        if value is not None and (best is None or value < best[0]):
            best = (value, path)
        if directory == location.mount_point or directory == directory.parent:
            break
        directory = directory.parent
    if best is None:
        log.debug("No cgroup memory limit from %s up to %s", location.directory, location.mount_point)
        return None
    log.debug("cgroup memory limit %d bytes from %s", best[0], best[1])
    return best[0]


def _root_limit(root: Path) -> int | None:
    """The pre-/proc rule: only the limit files at the mount root."""
    for path in (root / _V2_LIMIT_FILE, root / "memory" / _V1_LIMIT_FILE, root / _V1_LIMIT_FILE):
        if path.exists():
            value = _read_int(path)
            log.debug("cgroup memory limit %s from %s", value, path)
            return value
    return None


def cgroup_memory_limit(
    root: Path | str = DEFAULT_CGROUP_ROOT,
    *,
    proc_self_cgroup: Path | str | None = None,
    mountinfo: Path | str | None = None,
) -> int | None:
    """The container's memory limit in bytes, or None when unlimited or not in a cgroup. Never raises.

    Like the JVM's container support: find this process's own memory cgroup from
    ``/proc/self/cgroup`` and ``/proc/self/mountinfo`` (``resolve_memory_cgroup``), then take the
    smallest limit from there up to the mount point — v2 ``memory.max`` (``max``: none), v1
    ``memory.limit_in_bytes`` (>= 2**60: none). A process in a 2 GiB child cgroup sees its 2 GiB.

    The proc files are used when ``root`` is the default or either of them is given. Otherwise, or
    when they name no mounted cgroup, only the files at ``root`` count (``memory.max``,
    ``memory/memory.limit_in_bytes``, ``memory.limit_in_bytes``), as before.
    """
    root = Path(root)
    if root == DEFAULT_CGROUP_ROOT or proc_self_cgroup is not None or mountinfo is not None:
        try:
            location = resolve_memory_cgroup(
                proc_self_cgroup or DEFAULT_PROC_SELF_CGROUP, mountinfo or DEFAULT_MOUNTINFO
            )
            if location is not None:
                return _smallest_limit(location)
        except (OSError, ValueError) as exc:  # defensive: an odd /proc must not stop the server
            log.debug("Could not resolve the cgroup from /proc: %s", exc)
        log.debug("Own memory cgroup not found in /proc; reading the limit at %s only", root)
    return _root_limit(root)


def host_total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def visible_gpus() -> list[VisibleGpu]:
    """The CUDA devices this process sees (``CUDA_VISIBLE_DEVICES`` applied); empty without CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(VisibleGpu(index, props.name, int(props.total_memory), (props.major, props.minor)))
    return gpus


def plan_device_budget(
    host_memory_percent: int,
    gpu_memory_percent: int,
    *,
    cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
    gpus: list[VisibleGpu] | None = None,
    host_total: int | None = None,
) -> DeviceBudget:
    """Budgets from the settings' percentages; ``gpus``/``host_total`` are injectable for tests."""
    limit = cgroup_memory_limit(cgroup_root)
    total = host_total if host_total is not None else host_total_memory()
    # A cgroup limit above the node's RAM (common in v1) is no real limit.
    base = min(limit, total) if limit is not None and total else (limit or total)
    gpus = visible_gpus() if gpus is None else gpus
    fraction = gpu_memory_percent / 100
    return DeviceBudget(
        container_limit_bytes=limit,
        host_total_bytes=total,
        cpu_budget_bytes=int(base * host_memory_percent / 100),
        gpus=gpus,
        gpu_budget_bytes={g.index: int(g.total_bytes * fraction) for g in gpus},
        gpu_fraction=fraction,
    )


def apply_gpu_fraction(plan: DeviceBudget) -> None:
    """Cap the CUDA caching allocator of every visible device; a no-op without CUDA."""
    if not plan.gpus:
        return
    import torch

    if not torch.cuda.is_available():
        return
    for gpu in plan.gpus:
        torch.cuda.set_per_process_memory_fraction(plan.gpu_fraction, gpu.index)


def gpu_memory_allocated() -> dict[str, int]:
    """Bytes held by tensors per visible device (``{"cuda:0": n}``); empty without CUDA."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count())}
