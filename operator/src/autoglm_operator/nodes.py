"""The GPU the pods will get, from the GPU-feature-discovery labels of the nodes they can land on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autoglm_operator import api

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def node_gpu(nodes: Sequence[Mapping[str, str]], spec: api.AutoGLMDeploymentSpec) -> Any:
    """GPU facts from the GPU-feature-discovery labels of the nodes the pods can land on (``nodes``:
    the labels of the GPU-labelled nodes, from the operator's watch).

    With ``resources.gpu.product``: a node with that product label. Without a product (and without
    an explicit memory): every GPU-labelled node matching ``scheduling.nodeSelector``, and of those
    the GPU with the least memory (the pods may land on any of them). Without access to nodes
    (``--no-node-lookup``) the planner uses its product table, or deploys an explicit quantization
    without a fit check.
    """
    gpu = spec.resources.gpu
    if gpu.memory or gpu.count == 0:
        return None
    from autoglm_operator.memory.gpus import gpu_from_node_labels
    from autoglm_operator.render import gpu_product_label

    if gpu.product:
        wanted = {GPU_PRODUCT_LABEL: gpu_product_label(gpu.product)}
    else:
        wanted = dict(spec.scheduling.node_selector)
    candidates = [
        node
        for node in nodes
        if GPU_PRODUCT_LABEL in node and all(node.get(k) == v for k, v in wanted.items())
    ]
    found = [info for info in map(gpu_from_node_labels, candidates) if info is not None]
    if not found:
        return None
    return found[0] if gpu.product else min(found, key=lambda info: info.memory_bytes)
