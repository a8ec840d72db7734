"""GPU catalog, MIG slices, node labels and spec overrides."""

from __future__ import annotations

import pytest

from autoglm_operator.api import GpuSpec
from autoglm_operator.memory import (
    GpuInfo,
    MemoryFitError,
    gpu_from_node_labels,
    lookup_gpu,
    mig_profile,
    resolve_gpu,
)
from autoglm_operator.memory.gpus import parse_quantity
from autoglm_operator.memory.types import GIB, MIB


@pytest.mark.parametrize(
    ("name", "product", "cc"),
    [
        ("L4", "NVIDIA-L4", (8, 9)),
        ("l4", "NVIDIA-L4", (8, 9)),
        ("NVIDIA-L4", "NVIDIA-L4", (8, 9)),
        ("T4", "Tesla-T4", (7, 5)),
        ("Tesla-T4", "Tesla-T4", (7, 5)),
        ("A10G", "NVIDIA-A10G", (8, 6)),
        ("NVIDIA-A10G", "NVIDIA-A10G", (8, 6)),
        ("L40S", "NVIDIA-L40S", (8, 9)),
        ("A100-40GB", "NVIDIA-A100-SXM4-40GB", (8, 0)),
        ("NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-SXM4-40GB", (8, 0)),
        ("A100-80GB", "NVIDIA-A100-SXM4-80GB", (8, 0)),
        ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB", (8, 0)),
        ("H100", "NVIDIA-H100-80GB-HBM3", (9, 0)),
        ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3", (9, 0)),
        ("H200", "NVIDIA-H200", (9, 0)),
        ("NVIDIA-H200", "NVIDIA-H200", (9, 0)),
        ("RTX4090", "NVIDIA-GeForce-RTX-4090", (8, 9)),
        ("NVIDIA-GeForce-RTX-4090", "NVIDIA-GeForce-RTX-4090", (8, 9)),
        ("NVIDIA-A100-SXM4-40GB-SHARED", "NVIDIA-A100-SXM4-40GB", (8, 0)),
    ],
)
def test_short_names_and_gfd_product_labels(name, product, cc):
    gpu = lookup_gpu(name)
    assert gpu is not None
    assert gpu.product == product
    assert gpu.compute_capability == cc
    assert gpu.bandwidth_gbps > 0


def test_catalog_memory_is_close_to_the_marketing_size():
    for name, gb in [
        ("T4", 16),
        ("L4", 24),
        ("A10G", 24),
        ("L40S", 48),
        ("A100-40GB", 40),
        ("A100-80GB", 80),
        ("H100", 80),
        ("H200", 141),
        ("RTX4090", 24),
    ]:
        gpu = lookup_gpu(name)
        assert gpu is not None
        assert 0.93 * gb * 1e9 <= gpu.memory_mib * MIB <= 1.1 * gb * 1e9, name


def test_ambiguous_and_unknown_products():
    with pytest.raises(MemoryFitError, match="A100-40GB or A100-80GB"):
        lookup_gpu("A100")
    assert lookup_gpu("Quantum-X9") is None
    with pytest.raises(MemoryFitError, match="set spec.resources.gpu.memory") as info:
        resolve_gpu(GpuSpec(product="Quantum-X9"))
    assert info.value.field_path == "spec.resources.gpu.product"
    with pytest.raises(MemoryFitError, match="spec.resources.gpu.product"):
        resolve_gpu(GpuSpec())


def test_unknown_product_with_memory_is_accepted_without_assuming_bf16():
    gpu = resolve_gpu(GpuSpec(product="Quantum-X9", memory="48Gi"))
    assert gpu is not None
    assert gpu.memory_bytes == 48 * GIB
    assert gpu.compute_capability is None


def test_spec_memory_and_compute_capability_override_the_table():
    gpu = resolve_gpu(GpuSpec(product="L4", memory="20Gi", compute_capability="7.5"))
    assert gpu is not None
    assert gpu.memory_bytes == 20 * GIB
    assert gpu.compute_capability == (7, 5)


@pytest.mark.parametrize(
    ("resource", "gb"),
    [
        ("nvidia.com/mig-3g.40gb", 40),
        ("nvidia.com/mig-1g.10gb", 10),
        ("nvidia.com/mig-1g.5gb", 5),
        ("nvidia.com/mig-7g.80gb", 80),
    ],
)
def test_mig_slice_memory_comes_from_the_resource_name(resource, gb):
    assert mig_profile(resource) is not None
    gpu = resolve_gpu(GpuSpec(resource_name=resource))
    assert gpu is not None
    assert gpu.memory_bytes == gb * 10**9
    assert gpu.compute_capability is None  # no product: unknown


def test_mig_with_product_takes_compute_capability_from_the_product():
    gpu = resolve_gpu(GpuSpec(resource_name="nvidia.com/mig-3g.40gb", product="A100-80GB"))
    assert gpu is not None
    assert gpu.memory_bytes == 40 * 10**9
    assert gpu.compute_capability == (8, 0)
    assert "MIG 3g.40gb" in gpu.name


def test_cpu_has_no_gpu():
    assert resolve_gpu(GpuSpec(count=0, product="L4")) is None


def test_node_labels_from_gpu_feature_discovery():
    labels = {
        "nvidia.com/gpu.product": "NVIDIA-L4",
        "nvidia.com/gpu.memory": "23034",
        "nvidia.com/gpu.compute.major": "8",
        "nvidia.com/gpu.compute.minor": "9",
    }
    gpu = gpu_from_node_labels(labels)
    assert gpu == GpuInfo("NVIDIA-L4", 23034 * MIB, (8, 9), 300)
    odd = gpu_from_node_labels(
        {
            "nvidia.com/gpu.product": "NVIDIA-Future",
            "nvidia.com/gpu.memory": "65536",
            "nvidia.com/gpu.compute.major": "10",
            "nvidia.com/gpu.compute.minor": "0",
        }
    )
    assert odd == GpuInfo("NVIDIA-Future", 64 * GIB, (10, 0), None)
    assert gpu_from_node_labels({"kubernetes.io/os": "linux"}) is None
    # The node's memory is used when the spec names no memory; the spec still wins when it does.
    assert resolve_gpu(GpuSpec(product="NVIDIA-Future"), odd) == GpuInfo(
        "NVIDIA-Future", 64 * GIB, (10, 0), None
    )
    pinned = resolve_gpu(GpuSpec(product="NVIDIA-Future", memory="32Gi"), odd)
    assert pinned is not None
    assert pinned.memory_bytes == 32 * GIB


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("24Gi", 24 * GIB),
        ("16G", 16 * 10**9),
        ("23034Mi", 23034 * MIB),
        ("1.5Ti", int(1.5 * 2**40)),
        ("1000", 1000),
    ],
)
def test_kubernetes_quantities(text, n):
    assert parse_quantity(text) == n


def test_bad_quantity_names_the_field():
    with pytest.raises(MemoryFitError, match="not a Kubernetes quantity") as info:
        parse_quantity("24 gigs")
    assert info.value.field_path == "spec.resources.gpu.memory"
