"""GPU catalog, MIG profiles, node labels and Kubernetes quantities: where a replica's GPU memory comes from.

Precedence for one GPU's memory: ``spec.resources.gpu.memory`` > the MIG profile in
``resourceName`` > the node's ``nvidia.com/gpu.memory`` label > the product table below.
Compute capability: ``spec.resources.gpu.computeCapability`` > node labels > product table > unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from autoglm_operator.memory.errors import GpuUnknownError, MemoryFitError
from autoglm_operator.memory.types import MIB, GpuInfo

# GPU-feature-discovery labels (https://github.com/NVIDIA/k8s-device-plugin, gpu-feature-discovery).
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"  # MiB
LABEL_CC_MAJOR = "nvidia.com/gpu.compute.major"
LABEL_CC_MINOR = "nvidia.com/gpu.compute.minor"


@dataclass(frozen=True)
class GpuModel:
    """One catalog entry. ``memory_mib`` is the total nvidia-smi (and the GFD memory label) reports,
    a little under the marketing size; ``bandwidth_gbps`` is the datasheet peak in GB/s."""

    product: str  # canonical name: the GFD nvidia.com/gpu.product label value
    memory_mib: int
    compute_capability: tuple[int, int]
    bandwidth_gbps: float
    nominal_gb: int
    aliases: tuple[str, ...] = ()

    def info(self) -> GpuInfo:
        return GpuInfo(self.product, self.memory_mib * MIB, self.compute_capability, self.bandwidth_gbps)


GPU_CATALOG: tuple[GpuModel, ...] = (
    GpuModel("Tesla-T4", 15360, (7, 5), 320, 16, ("T4", "NVIDIA-T4")),
    GpuModel("Tesla-V100-SXM2-16GB", 16384, (7, 0), 900, 16, ("V100", "V100-16GB", "Tesla-V100-PCIE-16GB")),
    GpuModel("Tesla-V100-SXM2-32GB", 32768, (7, 0), 900, 32, ("V100-32GB", "Tesla-V100-PCIE-32GB")),
    GpuModel("NVIDIA-L4", 23034, (8, 9), 300, 24, ("L4",)),
    GpuModel("NVIDIA-A10G", 23028, (8, 6), 600, 24, ("A10G",)),
    GpuModel("NVIDIA-A10", 23028, (8, 6), 600, 24, ("A10",)),
    GpuModel("NVIDIA-L40S", 46068, (8, 9), 864, 48, ("L40S",)),
    GpuModel(
        "NVIDIA-A100-SXM4-40GB",
        40960,
        (8, 0),
        1555,
        40,
        ("A100-40GB", "NVIDIA-A100-PCIE-40GB", "A100-SXM4-40GB"),
    ),
    GpuModel(
        "NVIDIA-A100-SXM4-80GB",
        81920,
        (8, 0),
        2039,
        80,
        ("A100-80GB", "NVIDIA-A100-80GB-PCIe", "A100-SXM4-80GB"),
    ),
    GpuModel(
        "NVIDIA-H100-80GB-HBM3", 81559, (9, 0), 3350, 80, ("H100", "H100-80GB", "H100-SXM", "H100-SXM5-80GB")
    ),
    GpuModel("NVIDIA-H100-PCIe", 81559, (9, 0), 2000, 80, ("H100-PCIE",)),
    GpuModel("NVIDIA-H200", 143771, (9, 0), 4800, 141, ("H200", "NVIDIA-H200-141GB-HBM3E", "H200-141GB")),
    GpuModel("NVIDIA-GeForce-RTX-4090", 24564, (8, 9), 1008, 24, ("RTX4090", "RTX-4090", "GeForce-RTX-4090")),
)
_AMBIGUOUS = {"A100": "A100-40GB or A100-80GB", "NVIDIA-A100": "A100-40GB or A100-80GB"}


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip()).upper()


_BY_NAME: dict[str, GpuModel] = {_key(n): g for g in GPU_CATALOG for n in (g.product, *g.aliases)}
_MIG = re.compile(r"MIG-(\d+)G\.(\d+)GB", re.IGNORECASE)


def lookup_gpu(product: str) -> GpuModel | None:
    """Catalog entry for a short name (``L4``) or GFD product label (``NVIDIA-L4``), any case; None if unknown.

    GFD suffixes are ignored: ``-SHARED`` (time-slicing) and ``-MIG-3g.40gb`` (mixed MIG strategy).
    """
    key = _key(product)
    key = re.sub(r"-SHARED$", "", key)
    key = re.sub(r"-MIG-\d+G\.\d+GB.*$", "", key)
    for candidate in (key, re.sub(r"^(NVIDIA-GEFORCE-|NVIDIA-|TESLA-)", "", key)):
        if candidate in _AMBIGUOUS:
            raise MemoryFitError(
                "spec.resources.gpu.product", f"{product!r} is ambiguous: use {_AMBIGUOUS[candidate]}"
            )
        if candidate in _BY_NAME:
            return _BY_NAME[candidate]
    return None


def known_gpu_names() -> list[str]:
    return [g.aliases[0] if g.aliases else g.product for g in GPU_CATALOG]


def mig_profile(name: str) -> tuple[str, int] | None:
    """(profile, slice memory in bytes) from ``nvidia.com/mig-3g.40gb`` or a product ending ``-MIG-3g.40gb``.

    The ``Ngb`` of a profile name is read as N decimal gigabytes: never more than the slice really
    has (a 3g.40gb slice of an A100-80GB has 40192 MiB; 40 GB is 38147 MiB), so the check errs safe.
    """
    match = _MIG.search(name)
    if not match:
        return None
    return f"{match.group(1)}g.{match.group(2)}gb", int(match.group(2)) * 10**9


_SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


def parse_quantity(text: str, field: str = "spec.resources.gpu.memory") -> int:
    """Bytes of a Kubernetes quantity (``24Gi``, ``16G``, ``23034Mi``)."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise MemoryFitError(field, f"{text!r} is not a Kubernetes quantity like 24Gi or 16G")
    try:
        value = Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]
    except InvalidOperation:  # pragma: no cover - the regex only admits decimals
        raise MemoryFitError(field, f"{text!r} is not a number") from None
    return int(value)


def parse_compute_capability(
    text: str, field: str = "spec.resources.gpu.computeCapability"
) -> tuple[int, int]:
    match = re.match(r"^\s*(\d+)\.(\d+)\s*$", str(text))
    if not match:
        raise MemoryFitError(field, f"{text!r} is not a compute capability like 8.9")
    return int(match.group(1)), int(match.group(2))


def gpu_from_node_labels(labels: Mapping[str, str]) -> GpuInfo | None:
    """GpuInfo from a node's GPU-feature-discovery labels; None when the node has none.

    Memory comes from ``nvidia.com/gpu.memory`` (MiB), else the product table; compute capability
    from ``nvidia.com/gpu.compute.major``/``minor``, else the product table.
    """
    product = labels.get(LABEL_PRODUCT)
    memory = labels.get(LABEL_MEMORY)
    if not product and not memory:
        return None
    model = lookup_gpu(product) if product else None
    try:
        memory_bytes = int(memory) * MIB if memory else (model.memory_mib * MIB if model else 0)
    except ValueError:
        memory_bytes = model.memory_mib * MIB if model else 0
    cc: tuple[int, int] | None = model.compute_capability if model else None
    major, minor = labels.get(LABEL_CC_MAJOR), labels.get(LABEL_CC_MINOR)
    if major is not None and str(major).isdigit():
        cc = (int(major), int(minor) if minor is not None and str(minor).isdigit() else 0)
    if not memory_bytes:
        return None
    name = model.product if model else (product or "GPU")
    return GpuInfo(name, memory_bytes, cc, model.bandwidth_gbps if model else None)


def resolve_gpu(gpu_spec: object, node_gpu: GpuInfo | None = None) -> GpuInfo | None:
    """One GPU (or MIG slice) of a replica from ``spec.resources.gpu`` (an api.GpuSpec) and, when the
    operator found a labelled node, its :class:`GpuInfo`. None when ``count`` is 0 (CPU)."""
    count = int(getattr(gpu_spec, "count", 1))
    if count == 0:
        return None
    product: str | None = getattr(gpu_spec, "product", None)
    resource_name: str = getattr(gpu_spec, "resource_name", "nvidia.com/gpu") or "nvidia.com/gpu"
    memory_text: str | None = getattr(gpu_spec, "memory", None)
    cc_text: str | None = getattr(gpu_spec, "compute_capability", None)

    model = lookup_gpu(product) if product else None
    mig = mig_profile(resource_name) or (mig_profile(product) if product else None)

    if memory_text:
        memory = parse_quantity(memory_text)
    elif mig:
        memory = mig[1]
    elif node_gpu is not None:
        memory = node_gpu.memory_bytes
    elif model is not None:
        memory = model.memory_mib * MIB
    elif product:
        raise MemoryFitError(
            "spec.resources.gpu.product",
            f"unknown GPU product {product!r} (known: {', '.join(known_gpu_names())}); "
            "set spec.resources.gpu.memory (e.g. 24Gi) and computeCapability (e.g. 8.9)",
        )
    else:
        raise GpuUnknownError()

    if cc_text:
        cc: tuple[int, int] | None = parse_compute_capability(cc_text)
    elif node_gpu is not None and node_gpu.compute_capability is not None:
        cc = node_gpu.compute_capability
    else:
        cc = model.compute_capability if model else None

    name = model.product if model else (product or (node_gpu.name if node_gpu else "GPU"))
    if mig:
        name = f"{name} MIG {mig[0]}" if (model or product or node_gpu) else f"MIG {mig[0]}"
    bandwidth = model.bandwidth_gbps if model else (node_gpu.bandwidth_gbps if node_gpu else None)
    return GpuInfo(name, memory, cc, bandwidth)
