"""``autoglm-operator estimate``: will the model fit? GPU memory per quantization mode and the auto choice.

From a CR file (``-f FILE``, ``-`` for stdin) or from flags; flags given with ``-f`` override the
file's values. Offline by default (built-in catalog and spec hints); ``--network`` also asks the hub.
Exit status: 0 when the planned mode fits, 1 when it does not, 2 for input that allows no estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml
from pydantic import ValidationError

from autoglm_operator import api
from autoglm_operator.memory import MemoryFitError, MemoryPlan, plan_memory
from autoglm_operator.memory.estimator import CUDA_CONTEXT_BYTES
from autoglm_operator.memory.types import GIB, Estimate
from autoglm_runtime.kvplan import BLOCK_SIZE, FRAGMENTATION_PERCENT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", metavar="FILE", help="AutoGLMDeployment YAML ('-' reads stdin)")
    p.add_argument("--model", help="hf://org/name, org/name, https://mirror/org/name or pvc://claim/path")
    p.add_argument(
        "--quantization", choices=[m.value for m in api.QuantizationMode], help="mode to plan (default: auto)"
    )
    p.add_argument(
        "--gpu", metavar="PRODUCT", help="GPU product: L4, T4, A10G, L40S, A100-80GB, H100, NVIDIA-L4 ..."
    )
    p.add_argument("--count", type=int, help="GPUs per replica (0 = CPU)")
    p.add_argument("--resource-name", help="GPU resource, e.g. nvidia.com/mig-3g.40gb")
    p.add_argument(
        "--gpu-memory", metavar="QUANTITY", help="memory of one GPU, e.g. 24Gi (overrides the table)"
    )
    p.add_argument("--compute-capability", metavar="X.Y", help="e.g. 8.9 (overrides the table)")
    p.add_argument("--max-batch", type=int, help="serving.maxBatchSize")
    p.add_argument(
        "--max-tokens", type=int, help="input + new tokens per request (input = this - max new tokens)"
    )
    p.add_argument("--max-input-tokens", type=int, help="serving.maxInputTokens")
    p.add_argument("--max-new-tokens", type=int, help="serving.maxNewTokens")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        help="serving.maxBatchTokens: tokens per engine step (default 2048 on a GPU)",
    )
    p.add_argument("--kv-cache-tokens", type=int, help="serving.kvCacheTokens: cap on the KV pool in tokens")
    p.add_argument("--gpu-memory-percent", type=int, help="memory.gpuMemoryPercent")
    p.add_argument("--headroom-percent", type=int, help="memory.headroomPercent")
    p.add_argument(
        "--network", action="store_true", help="fetch config.json from the hub for models outside the catalog"
    )
    p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")


def _load_specs(filename: str) -> list[tuple[str, dict[str, Any]]]:
    text = sys.stdin.read() if filename == "-" else open(filename, encoding="utf-8").read()  # noqa: SIM115
    found = []
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == api.KIND:
            name = (doc.get("metadata") or {}).get("name") or api.KIND
            found.append((str(name), dict(doc.get("spec") or {})))
    if not found:
        raise MemoryFitError("kind", f"{filename}: no {api.KIND} object found")
    return found


def _source(model: str) -> str:
    return model if "://" in model else f"hf://{model}"


def _apply_flags(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Spec dict with the flags laid over it (camelCase, as in a CR)."""
    spec = json.loads(json.dumps(spec))  # deep copy of plain YAML data
    if args.model:
        spec.setdefault("model", {})["source"] = _source(args.model)
    if args.quantization:
        spec["quantization"] = args.quantization
        if args.quantization not in ("nf4", "fp4", "auto"):
            spec.pop("quantizationOptions", None)  # 4-bit options of the file do not apply to this mode
    gpu = spec.setdefault("resources", {}).setdefault("gpu", {})
    for flag, key in (
        ("gpu", "product"),
        ("count", "count"),
        ("resource_name", "resourceName"),
        ("gpu_memory", "memory"),
        ("compute_capability", "computeCapability"),
    ):
        if getattr(args, flag) is not None:
            gpu[key] = getattr(args, flag)
    memory = spec.setdefault("memory", {})
    for flag, key in (("gpu_memory_percent", "gpuMemoryPercent"), ("headroom_percent", "headroomPercent")):
        if getattr(args, flag) is not None:
            memory[key] = getattr(args, flag)
    serving = spec.setdefault("serving", {})
    if args.max_batch is not None:
        serving["maxBatchSize"] = args.max_batch
        serving["maxConcurrentRequests"] = max(args.max_batch, int(serving.get("maxConcurrentRequests", 64)))
    if args.max_new_tokens is not None:
        serving["maxNewTokens"] = args.max_new_tokens
    if args.max_batch_tokens is not None:
        serving["maxBatchTokens"] = args.max_batch_tokens
    if args.kv_cache_tokens is not None:
        serving["kvCacheTokens"] = args.kv_cache_tokens
    if args.max_input_tokens is not None:
        serving["maxInputTokens"] = args.max_input_tokens
    if args.max_tokens is not None:
        new = int(serving.get("maxNewTokens", 512))
        if args.max_tokens <= new:
            raise MemoryFitError("--max-tokens", f"must be more than the max new tokens ({new})")
        serving["maxInputTokens"] = args.max_tokens - new
    return spec


def _g(n: int) -> str:
    return f"{n / GIB:.1f}"


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _pool(e: Estimate) -> str:
    if e.kv_pool_tokens is None:
        return "pool not sized (no memory budget to size it from)"
    assert e.kv_pool_bytes is not None
    return (
        f"pool {e.kv_pool_tokens} tokens ({_g(e.kv_pool_bytes)} GiB) = "
        f"{e.concurrent_full_requests} full-length requests at once"
    )


def _table(name: str, spec: api.AutoGLMDeploymentSpec, plan: MemoryPlan) -> str:
    s, gpu, e0 = plan.shape, plan.gpu, plan.chosen
    out = [f"== {name}"]
    out.append(
        f"model     {s.name} ({s.source}): {s.parameters / 1e9:.2f} B parameters, {s.num_layers} layers, "
        f"{s.num_kv_heads} KV heads x {s.head_dim} head dim, hidden {s.hidden_size}, vocab {s.vocab_size}"
        + (", tied embeddings" if s.tie_word_embeddings else "")
        + (f", vision tower {s.vision_parameters / 1e9:.2f} B" if s.vision_parameters else "")
    )
    pct, head = spec.memory.gpu_memory_percent, spec.memory.headroom_percent
    if gpu is None:
        out.append(
            f"target    CPU (no GPU): budget = container memory limit x hostMemoryPercent "
            f"{spec.memory.host_memory_percent}% = {_g(e0.budget_bytes)} GiB"
        )
    else:
        cc = (
            f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
            if gpu.compute_capability
            else "unknown"
        )
        out.append(
            f"gpu       {plan.gpu_count} x {gpu.name}: {_g(gpu.memory_bytes)} GiB each, compute capability {cc}; "
            f"budget {pct}% = {_g(e0.budget_bytes)} GiB, headroom {head}% = {_g(e0.headroom_bytes)} GiB "
            f"-> usable {_g(e0.usable_bytes)} GiB"
        )
    w = spec.serving
    kvb = e0.kv_bytes_per_token // (2 * s.num_layers * s.num_kv_heads * s.head_dim)
    out.append(
        f"kv cache  2 x {s.num_layers} layers x {s.num_kv_heads} KV heads x {s.head_dim} head dim x {kvb} bytes "
        f"= {e0.kv_bytes_per_token / 1024:.0f} KiB per token, in blocks of {BLOCK_SIZE} tokens"
    )
    out.append(
        f"          min one request of {w.max_input_tokens} input + {w.max_new_tokens} new tokens "
        f"= {e0.kv_tokens} tokens -> {_g(e0.kv_cache_bytes)} GiB; {_pool(e0)}"
    )
    out.append("")
    header = (
        f"{'mode':<6} {'weights':>8} {'kv min':>7} {'overhead':>9} {'total':>7} {'budget':>7} {'usable':>7}  "
        f"{'fits':<4} {'kv pool':>12} {'full':>5}"
    )
    out.append(header + "   (GiB; kv pool in tokens; full = full-length requests at once)")
    for e in plan.table:
        fits = "yes" if e.fits else ("n/a" if not e.supported else "no")
        mark = "  <- " + ("auto" if plan.requested == "auto" else "planned") if e is plan.chosen else ""
        pool = "-" if e.kv_pool_tokens is None else str(e.kv_pool_tokens)
        full = "-" if e.concurrent_full_requests is None else str(e.concurrent_full_requests)
        out.append(
            f"{e.quantization:<6} {_g(e.weights_bytes):>8} {_g(e.kv_cache_bytes):>7} {_g(e.overhead_bytes):>9} "
            f"{_g(e.total_bytes):>7} {_g(e.budget_bytes):>7} {_g(e.usable_bytes):>7}  {fits:<4} {pool:>12} {full:>5}{mark}"
        )
    ctx = "CPU process" if gpu is None else f"CUDA context {CUDA_CONTEXT_BYTES / GIB:.1f} x {plan.gpu_count}"
    step = (
        "maxBatchTokens"
        if w.max_batch_tokens
        else ("default on a CPU" if gpu is None else "default on a GPU")
    )
    if e0.step_tokens == w.max_batch_size and e0.step_tokens != w.max_batch_tokens:
        step = "maxBatchSize"
    out.append(
        f"overhead ({e0.quantization}) = {ctx} {_g(e0.context_bytes)} + activations {_g(e0.activation_bytes)} "
        f"(one step of {e0.step_tokens} tokens ({step}) + logits of {_rows(min(w.max_batch_size, e0.step_tokens))}) "
        f"+ fragmentation {FRAGMENTATION_PERCENT}% of KV+activations {_g(e0.fragmentation_bytes)}"
    )
    out.append("")
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    out.append(
        f"{plan.requested} -> {plan.quantization} ({plan.estimated_gpu_memory}, {verdict}): {plan.reason}"
    )
    return "\n".join(out)


def _estimate_json(e: Estimate) -> dict[str, Any]:
    return {
        "quantization": e.quantization,
        "weights_bytes": e.weights_bytes,
        "kv_cache_bytes": e.kv_cache_bytes,
        "overhead_bytes": e.overhead_bytes,
        "context_bytes": e.context_bytes,
        "activation_bytes": e.activation_bytes,
        "fragmentation_bytes": e.fragmentation_bytes,
        "step_tokens": e.step_tokens,
        "kv_pool_tokens": e.kv_pool_tokens,
        "kv_pool_bytes": e.kv_pool_bytes,
        "concurrent_full_requests": e.concurrent_full_requests,
        "total_bytes": e.total_bytes,
        "budget_bytes": e.budget_bytes,
        "headroom_bytes": e.headroom_bytes,
        "usable_bytes": e.usable_bytes,
        "supported": e.supported,
        "fits": e.fits,
        "note": e.note,
        **{k: v for k, v in e.to_status().model_dump(mode="json").items() if k.endswith("_gib")},
    }


def _json(name: str, spec: api.AutoGLMDeploymentSpec, plan: MemoryPlan) -> dict[str, Any]:
    s, gpu = plan.shape, plan.gpu
    return {
        "name": name,
        "model": {
            "name": s.name,
            "source": s.source,
            "parameters": s.parameters,
            "num_layers": s.num_layers,
            "num_kv_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "hidden_size": s.hidden_size,
            "vocab_size": s.vocab_size,
            "tie_word_embeddings": s.tie_word_embeddings,
            "vision_parameters": s.vision_parameters,
        },
        "gpu": None
        if gpu is None
        else {
            "name": gpu.name,
            "count": plan.gpu_count,
            "memory_bytes": gpu.memory_bytes,
            "compute_capability": ".".join(map(str, gpu.compute_capability))
            if gpu.compute_capability
            else None,
            "bandwidth_gbps": gpu.bandwidth_gbps,
        },
        "kv_cache": {
            "bytes_per_token": plan.chosen.kv_bytes_per_token,
            "block_size": BLOCK_SIZE,
            "tokens": plan.chosen.kv_tokens,
            "request_tokens": plan.chosen.request_tokens,
            "pool_tokens": plan.chosen.kv_pool_tokens,
            "concurrent_full_requests": plan.chosen.concurrent_full_requests,
            "max_batch_size": spec.serving.max_batch_size,
            "max_batch_tokens": spec.serving.max_batch_tokens,
            "step_tokens": plan.chosen.step_tokens,
            "max_input_tokens": spec.serving.max_input_tokens,
            "max_new_tokens": spec.serving.max_new_tokens,
        },
        "table": [_estimate_json(e) for e in plan.table],
        "requested": plan.requested,
        "quantization": plan.quantization,
        "fits": plan.fits,
        "reason": plan.reason,
        "estimatedGpuMemory": plan.estimated_gpu_memory,
        "status": plan.to_status().model_dump(by_alias=True, mode="json"),
    }


def _validation_message(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in ("spec", *err["loc"]))
        lines.append(f"{path}: {err['msg']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        if args.filename:
            docs = _load_specs(args.filename)
        elif args.model:
            docs = [("estimate", {})]
        else:
            print("error: give -f FILE or --model (see --help)", file=sys.stderr)
            return 2
        results = []
        for name, raw in docs:
            try:
                spec = api.AutoGLMDeploymentSpec.model_validate(_apply_flags(raw, args))
            except ValidationError as exc:
                print(f"error: {name}: invalid spec:\n{_validation_message(exc)}", file=sys.stderr)
                return 2
            results.append((name, spec, plan_memory(spec, allow_network=args.network)))
    except MemoryFitError as exc:
        print(f"error: {exc.field_path}: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        data = [_json(n, s, p) for n, s, p in results]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        print("\n\n".join(_table(n, s, p) for n, s, p in results))
    return 0 if all(p.fits for _, _, p in results) else 1
