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
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX rounded to pages); anything at or
# above this is treated as unlimited.
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class MemoryPlan:
    """What the loader passes to ``from_pretrained`` and what the log and metrics report."""

    container_limit_bytes: int | None  # None: no cgroup limit found
    host_total_bytes: int
    cpu_budget_bytes: int
    gpus: list[GpuInfo] = field(default_factory=list)
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


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text:
        return None
    try:
        value = int(text)
    except ValueError:
        log.warning("Ignoring unreadable cgroup value %r in %s", text, path)
        return None
    return value if 0 < value < _V1_UNLIMITED else None


def cgroup_memory_limit(root: Path | str = DEFAULT_CGROUP_ROOT) -> int | None:
    """The container's memory limit in bytes, or None when unlimited or not in a cgroup.

    cgroup v2 (unified) keeps it in ``<root>/memory.max``; v1 in ``<root>/memory/memory.limit_in_bytes``
    (or ``<root>/memory.limit_in_bytes`` when the memory controller itself is mounted at ``root``).
    """
    root = Path(root)
    v2 = root / "memory.max"
    if v2.exists():
        return _read_int(v2)
    for v1 in (root / "memory" / "memory.limit_in_bytes", root / "memory.limit_in_bytes"):
        if v1.exists():
            return _read_int(v1)
    return None


def host_total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def visible_gpus() -> list[GpuInfo]:
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
        gpus.append(GpuInfo(index, props.name, int(props.total_memory), (props.major, props.minor)))
    return gpus


def plan_memory(
    host_memory_percent: int,
    gpu_memory_percent: int,
    *,
    cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
    gpus: list[GpuInfo] | None = None,
    host_total: int | None = None,
) -> MemoryPlan:
    """Budgets from the settings' percentages; ``gpus``/``host_total`` are injectable for tests."""
    limit = cgroup_memory_limit(cgroup_root)
    total = host_total if host_total is not None else host_total_memory()
    # A cgroup limit above the node's RAM (common in v1) is no real limit.
    base = min(limit, total) if limit is not None and total else (limit or total)
    gpus = visible_gpus() if gpus is None else gpus
    fraction = gpu_memory_percent / 100
    return MemoryPlan(
        container_limit_bytes=limit,
        host_total_bytes=total,
        cpu_budget_bytes=int(base * host_memory_percent / 100),
        gpus=gpus,
        gpu_budget_bytes={g.index: int(g.total_bytes * fraction) for g in gpus},
        gpu_fraction=fraction,
    )


def apply_gpu_fraction(plan: MemoryPlan) -> None:
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
