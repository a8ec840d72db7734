"""Container-aware memory budgets: cgroup v1/v2 parsing and accelerate's max_memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm_runtime.loader import UnsupportedQuantizationError, check_hardware
from autoglm_runtime.memory import VisibleGpu, apply_gpu_fraction, cgroup_memory_limit, plan_device_budget
from autoglm_runtime.settings import RuntimeSettings

GIB = 2**30


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return root


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(write(tmp_path, "memory.max", f"{8 * GIB}\n")) == 8 * GIB


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    assert cgroup_memory_limit(write(tmp_path, "memory.max", "max\n")) is None


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    root = write(tmp_path, "memory/memory.limit_in_bytes", str(6 * GIB))
    assert cgroup_memory_limit(root) == 6 * GIB


def test_cgroup_v1_unlimited_sentinel(tmp_path: Path) -> None:
    root = write(tmp_path, "memory/memory.limit_in_bytes", "9223372036854771712")
    assert cgroup_memory_limit(root) is None


def test_no_cgroup_and_garbage(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path / "missing") is None
    assert cgroup_memory_limit(write(tmp_path, "memory.max", "lots")) is None


def test_cpu_budget_is_a_share_of_the_container_limit_not_the_node(tmp_path: Path) -> None:
    root = write(tmp_path, "memory.max", str(8 * GIB))
    plan = plan_device_budget(75, 90, cgroup_root=root, gpus=[], host_total=256 * GIB)
    assert plan.cpu_budget_bytes == 6 * GIB
    assert plan.max_memory == {"cpu": 6 * GIB}  # no GPU keys on a CPU-only machine
    assert "container limit 8.00 GiB" in plan.describe()


def test_limit_above_node_ram_falls_back_to_node_ram(tmp_path: Path) -> None:
    root = write(tmp_path, "memory.max", str(512 * GIB))
    plan = plan_device_budget(50, 90, cgroup_root=root, gpus=[], host_total=16 * GIB)
    assert plan.cpu_budget_bytes == 8 * GIB


def test_gpu_budgets_only_for_visible_devices(tmp_path: Path) -> None:
    gpus = [VisibleGpu(0, "NVIDIA L4", 24 * GIB, (8, 9)), VisibleGpu(1, "NVIDIA L4", 24 * GIB, (8, 9))]
    plan = plan_device_budget(75, 50, cgroup_root=tmp_path, gpus=gpus, host_total=64 * GIB)
    assert plan.max_memory == {0: 12 * GIB, 1: 12 * GIB, "cpu": 48 * GIB}
    assert plan.gpu_fraction == 0.5


def test_gpu_fraction_is_a_no_op_without_cuda(tmp_path: Path) -> None:
    # On this CPU build torch.cuda.set_per_process_memory_fraction would raise if called.
    apply_gpu_fraction(plan_device_budget(75, 90, cgroup_root=tmp_path, gpus=[]))


@pytest.mark.parametrize(
    ("quantization", "compute", "flag"),
    [("bf16", "bf16", "quantization bf16"), ("nf4", "bf16", "--compute-dtype fp16")],
)
def test_bf16_refused_on_old_gpus(tmp_path: Path, quantization: str, compute: str, flag: str) -> None:
    t4 = [VisibleGpu(0, "Tesla T4", 16 * GIB, (7, 5))]
    plan = plan_device_budget(75, 90, cgroup_root=tmp_path, gpus=t4, host_total=64 * GIB)
    settings = RuntimeSettings(model="m", quantization=quantization, compute_dtype=compute)
    with pytest.raises(UnsupportedQuantizationError, match="compute capability") as err:
        check_hardware(settings, plan)
    assert flag in str(err.value)
    assert "Tesla T4" in str(err.value)


def test_fp16_allowed_on_old_gpus(tmp_path: Path) -> None:
    t4 = [VisibleGpu(0, "Tesla T4", 16 * GIB, (7, 5))]
    plan = plan_device_budget(75, 90, cgroup_root=tmp_path, gpus=t4, host_total=64 * GIB)
    check_hardware(RuntimeSettings(model="m", quantization="fp16"), plan)
