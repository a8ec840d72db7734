"""The runtime against what users would run instead, same model and same load, ratios in one run.

Sections (each server group runs side by side; every concurrency level visits the servers in a
rotated order, so drift in a noisy machine's speed spreads over all of them):

1. batching — the packaged SmolLM2-135M-Instruct (a real model): the runtime with continuous
   batching vs the runtime with ``--max-batch-size 1`` (what a per-request ``model.generate``
   wrapper does) vs ``transformers serve --continuous-batching`` (Hugging Face's own server).
2. quantization — a random GLM of ~150M parameters: weight footprint per mode from the runtime's
   own loader (``get_memory_footprint``), the same for SmolLM2 as a real-model check, and
   throughput per mode through the server.
3. gpu — with CUDA only: a ~1.2B random GLM in bf16/int8/nf4 and the memory-bandwidth utilisation
   at batch 1 (weight bytes x tokens/s / the card's peak bandwidth); "skipped: no CUDA" elsewhere.

Every server gets the same torch thread count (``--threads``, default 1: on a shared 2-core
machine OpenMP threads spin-wait against other processes; a measured decode step was 3.6x slower
with 2 threads than with 1 under load).

``python -m benchmarks.runtime_bench --out bench-results/runtime.json [--sections batching quantization gpu]``

Batching alone, on another model or mode (it replaces the former ``benchmarks/runtime_batching.py``):
``python -m benchmarks.runtime_bench --sections batching --batching-model random --batching-quantization nf4``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Workload, make_prompt, run_workload
from benchmarks.profiling import recording
from benchmarks.profiling import summarize as summarize_profile
from benchmarks.servers import RunningServer, ServerSpec, autoglm_spec, hf_serve_spec, launched
from benchmarks.targets import target

log = logging.getLogger("runtime_bench")
REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "bench-results" / "models"

TARGET_BATCHING_X = 6.0
TARGET_PEER_X = 1.3
TARGET_NF4 = 0.36
TARGET_INT8 = 0.6


@dataclass(frozen=True)
class Load:
    input_tokens: int = 64
    output_tokens: int = 32
    concurrencies: tuple[int, ...] = (1, 4, 16)
    requests: tuple[int, ...] = (4, 8, 32)  # per concurrency level
    max_duration_s: float = 45.0  # no new requests after this (in-flight ones finish)
    threads: int = 1


def _with_threads(spec: ServerSpec, threads: int) -> ServerSpec:
    spec.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return spec


def _server_facts(servers: Sequence[RunningServer]) -> dict[str, dict[str, Any]]:
    facts = {}
    for s in servers:
        facts[s.spec.name] = {
            "ready_s": s.ready_s,
            "rss_mib_ready": s.rss_bytes() / 2**20,
            "idle_cpu_fraction": s.idle_cpu_fraction(1.0),
            "argv": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(s.spec.argv)).replace(
                str(REPO) + "/", ""
            ),
        }
    return facts


def sweep_servers(
    servers: Sequence[RunningServer],
    prompt: str,
    load: Load,
    model_names: dict[str, str | None],
    rounds: int = 1,
    profile: tuple[str, int, Path] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run each concurrency level on every server; {server: [summary per level]}.

    The order of servers rotates per level and round; with several rounds each (server, level)
    keeps its fastest round (noise on a shared machine only ever slows a run down) and all rounds'
    throughputs are kept in ``rounds_output_throughput``. ``profile=(server, concurrency, file)``
    samples that server with py-spy during that run (first round) and adds a ``profile`` summary.
    """
    all_runs: dict[str, list[list[dict[str, Any]]]] = {
        s.spec.name: [[] for _ in load.concurrencies] for s in servers
    }
    order = list(servers)
    for rnd in range(rounds):
        for level, (conc, n) in enumerate(zip(load.concurrencies, load.requests, strict=True)):
            k = (level + rnd) % len(order)
            for s in order[k:] + order[:k]:
                wl = Workload(
                    prompt=prompt,
                    output_tokens=load.output_tokens,
                    num_requests=n,
                    concurrency=conc,
                    model=model_names[s.spec.name],
                    backend=s.spec.backend,
                    warmup_requests=1 if level == 0 and rnd == 0 else 0,
                    max_duration_s=load.max_duration_s,
                )
                cpu0 = s.cpu_seconds()
                if profile is not None and rnd == 0 and (s.spec.name, conc) == profile[:2]:
                    with recording(s.proc.pid, profile[2]) as raw:
                        summary = asyncio.run(run_workload(s.spec.base_url, wl))
                    if raw is not None and raw.is_file():
                        summary["profile"] = summarize_profile(raw)
                else:
                    summary = asyncio.run(run_workload(s.spec.base_url, wl))
                summary["server_cpu_s"] = s.cpu_seconds() - cpu0
                summary["rss_mib_after"] = s.rss_bytes() / 2**20
                summary["load_average_1m"] = os.getloadavg()[0]
                all_runs[s.spec.name][level].append(summary)
                log.warning(
                    "%-26s c=%-3d %6.1f tok/s  TTFT p50 %7.0f p99 %7.0f ms  e2e p50 %7.0f ms  err %d skip %d load %.1f",
                    s.spec.name, conc, summary["output_throughput"], summary["ttft"]["p50_ms"],
                    summary["ttft"]["p99_ms"], summary["e2e"]["p50_ms"], summary["errors"], summary["skipped"],
                    summary["load_average_1m"],
                )  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, levels in all_runs.items():
        runs[name] = []
        for tries in levels:
            best = dict(max(tries, key=lambda r: r["output_throughput"]))
            best["rounds_output_throughput"] = [r["output_throughput"] for r in tries]
            runs[name].append(best)
    return runs


def _at(runs: list[dict[str, Any]], load: Load, conc: int) -> dict[str, Any]:
    return runs[load.concurrencies.index(conc)]


# --- 1. batching and the peer -----------------------------------------------------------------------
BATCHED = "autoglm (batch 16)"
NO_WINDOW = "autoglm (batch 16, window 0)"
UNBATCHED = "autoglm (batch 1)"
PEER = "transformers serve (CB)"


# The peer's flags for the same weights in memory as the runtime's --quantization.
PEER_QUANTIZATION = {
    "none": [],
    "bf16": ["--dtype", "bfloat16"],
    "fp16": ["--dtype", "float16"],
    "int8": ["--quantization", "bnb-8bit"],
    "nf4": ["--quantization", "bnb-4bit"],
}


def batching_section(
    model_dir: Path,
    load: Load,
    log_dir: Path,
    with_peer: bool = True,
    rounds: int = 1,
    quantization: str = "none",
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    prompt = make_prompt(load.input_tokens, AutoTokenizer.from_pretrained(model_dir))
    specs = [
        autoglm_spec(BATCHED, model_dir, max_batch_size=16, quantization=quantization),
        autoglm_spec(UNBATCHED, model_dir, max_batch_size=1, quantization=quantization),
        # What the default batch window costs/buys (the overhead benchmark shows its price at low load).
        autoglm_spec(
            NO_WINDOW,
            model_dir,
            max_batch_size=16,
            quantization=quantization,
            extra=["--batch-window-ms", "0"],
        ),  # fmt: skip
    ]
    if with_peer and quantization in PEER_QUANTIZATION:
        specs.append(
            hf_serve_spec(PEER, model_dir, continuous_batching=True, extra=PEER_QUANTIZATION[quantization])
        )
    with_peer = any(s.name == PEER for s in specs)
    specs = [_with_threads(s, load.threads) for s in specs]
    names = {s.name: (model_dir.name if s.backend == "autoglm" else None) for s in specs}
    with launched(specs, log_dir) as servers:
        facts = _server_facts(servers)
        top = max(load.concurrencies)
        runs = sweep_servers(servers, prompt, load, names, rounds=rounds)
        # An extra run under py-spy, outside the compared ones (the sampler takes CPU too).
        batched = next(s for s in servers if s.spec.name == BATCHED)
        one = Load(load.input_tokens, load.output_tokens, (top,), (top,), load.max_duration_s, load.threads)
        profiled = sweep_servers(
            [batched], prompt, one, names, profile=(BATCHED, top, log_dir / "profile-batched.txt")
        )
    result: dict[str, Any] = {
        "model": model_dir.name,
        "quantization": quantization,
        "servers": facts,
        "runs": runs,
        "targets": [],
    }
    if "profile" in profiled[BATCHED][0]:
        result["profile_batched_top"] = profiled[BATCHED][0]["profile"]

    b, u = _at(runs[BATCHED], load, top), _at(runs[UNBATCHED], load, top)
    u1 = _at(runs[UNBATCHED], load, min(load.concurrencies))
    speedup = b["output_throughput"] / u["output_throughput"] if u["output_throughput"] else float("nan")
    ttft_bound = 2 * u1["e2e"]["p50_ms"]
    result["ratios"] = {"batched_over_batch1_tokens_per_s": speedup}
    nw, nw1 = _at(runs[NO_WINDOW], load, top), _at(runs[NO_WINDOW], load, min(load.concurrencies))
    b1 = _at(runs[BATCHED], load, min(load.concurrencies))
    result["ratios"]["window0_over_default_window_tokens_per_s"] = (
        nw["output_throughput"] / b["output_throughput"]
    )
    result["ratios"]["window0_over_default_window_ttft_p50_concurrency1"] = (
        nw1["ttft"]["p50_ms"] / b1["ttft"]["p50_ms"]
    )
    result["targets"].append(
        target(
            f"batching throughput at concurrency {top} (x batch-1)",
            f">= {TARGET_BATCHING_X}x",
            speedup,
            speedup >= TARGET_BATCHING_X,
            unit="x",
            note=f"{b['output_throughput']:.1f} vs {u['output_throughput']:.1f} output tok/s",
        )
    )
    result["targets"].append(
        target(
            f"batched p99 TTFT at concurrency {top} <= 2x batch-1 p50 end-to-end (batch-1 alone, concurrency 1)",
            f"<= {ttft_bound:.0f} ms",
            b["ttft"]["p99_ms"],
            b["ttft"]["p99_ms"] <= ttft_bound,
            unit="ms",
            note=f"batch-1 p50 e2e at concurrency {top}, queueing included: {u['e2e']['p50_ms']:.0f} ms",
        )
    )
    if with_peer:
        p = _at(runs[PEER], load, top)
        peer_x = b["output_throughput"] / p["output_throughput"] if p["output_throughput"] else float("nan")
        result["ratios"]["batched_over_transformers_serve_tokens_per_s"] = peer_x
        result["targets"].append(
            target(
                f"output tok/s vs transformers serve --continuous-batching at concurrency {top}",
                f">= {TARGET_PEER_X}x",
                peer_x,
                peer_x >= TARGET_PEER_X,
                unit="x",
                note=f"{b['output_throughput']:.1f} vs {p['output_throughput']:.1f} output tok/s; peer errors {p['errors']}",
            )
        )
    return result


# --- 2. quantization --------------------------------------------------------------------------------
def footprints(model_dir: Path, modes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Weight bytes per mode as the runtime's loader reports them (``model.get_memory_footprint()``)."""
    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    out = {}
    for mode in modes:
        started = time.perf_counter()
        loaded = load_model(RuntimeSettings(model=str(model_dir), quantization=mode, warmup=False))
        params = sum(p.numel() for p in loaded.model.parameters())
        out[mode] = {
            "bytes": loaded.memory_bytes,
            "mib": loaded.memory_bytes / 2**20,
            "load_s": time.perf_counter() - started,
            "parameters_stored": params,
        }
        del loaded
        gc.collect()
        _empty_cuda_cache()
    return out


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ratio_targets(fp: dict[str, dict[str, Any]], model: str, base: str) -> list[dict[str, Any]]:
    ts = []
    for mode, goal in (("nf4", TARGET_NF4), ("int8", TARGET_INT8)):
        if mode in fp and base in fp:
            r = fp[mode]["bytes"] / fp[base]["bytes"]
            ts.append(
                target(
                    f"{mode} weight footprint / {base} ({model})",
                    f"<= {goal}",
                    r,
                    r <= goal,
                    note=f"{fp[mode]['mib']:.0f} MiB vs {fp[base]['mib']:.0f} MiB",
                )
            )
    return ts


def random_glm(target_params: int, name: str) -> Path:
    from autoglm_runtime.devmodels import build_random_glm

    path = MODELS / name
    if not (path / "config.json").is_file():
        build_random_glm(path, target_params=target_params)
    return path


def quantization_section(
    load: Load, log_dir: Path, smollm2: Path | None, modes: Sequence[str], rounds: int = 2
) -> dict[str, Any]:
    model_dir = random_glm(150_000_000, "random-glm-150m")
    fp = footprints(model_dir, ["bf16", *[m for m in modes if m != "bf16"]])
    params = fp["bf16"]["parameters_stored"]
    result: dict[str, Any] = {
        "model": model_dir.name,
        "parameters": params,
        "footprint": fp,
        "targets": _ratio_targets(fp, model_dir.name, "bf16"),
    }
    if smollm2 is not None:
        real = footprints(smollm2, ["bf16", "int8", "nf4"])
        result["footprint_smollm2"] = real
        result["targets"] += [
            {**t, "status": "INFO", "line": t["line"].replace("[PASS]", "[INFO]").replace("[MISS]", "[INFO]")}
            for t in _ratio_targets(real, smollm2.name, "bf16")
        ]
    # Throughput per mode: the same load at the top concurrency, servers side by side.
    top = max(load.concurrencies)
    qload = Load(
        input_tokens=load.input_tokens,
        output_tokens=load.output_tokens,
        concurrencies=(top,),
        requests=(top,),
        max_duration_s=load.max_duration_s,
        threads=load.threads,
    )
    prompt = make_prompt(load.input_tokens)
    specs = [
        _with_threads(
            autoglm_spec(f"autoglm {mode}", model_dir, quantization=mode, max_batch_size=16), load.threads
        )
        for mode in modes
    ]
    with launched(specs, log_dir) as servers:
        result["servers"] = _server_facts(servers)
        runs = sweep_servers(servers, prompt, qload, {s.name: model_dir.name for s in specs}, rounds=rounds)
    result["throughput"] = {name.removeprefix("autoglm "): r[0] for name, r in runs.items()}
    result["concurrency"] = top
    return result


# --- 3. GPU -----------------------------------------------------------------------------------------
def _peak_bandwidth_gbps(card: str) -> float | None:
    try:
        from autoglm_operator.memory.gpus import lookup_gpu
    except ImportError:
        return None
    candidates = [card, card.replace(" ", "-")]
    words = card.replace("NVIDIA", "").split()
    candidates += list(words) + ["-".join(words[:2])] + ["NVIDIA-" + "-".join(words[:2])]
    for name in candidates:
        model = lookup_gpu(name)
        if model is not None:
            return float(model.bandwidth_gbps)
    return None


def gpu_section(load: Load, log_dir: Path) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA", "targets": []}
    from benchmarks.machine import gpu_info

    card = gpu_info() or {}
    model_dir = random_glm(1_200_000_000, "random-glm-1b")
    modes = ["bf16", "int8", "nf4"]
    fp = footprints(model_dir, modes)
    prompt = make_prompt(load.input_tokens)
    gload = Load(
        input_tokens=load.input_tokens, output_tokens=load.output_tokens, concurrencies=load.concurrencies,
        requests=load.requests, max_duration_s=load.max_duration_s, threads=load.threads,
    )  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {}
    for mode in modes:  # one at a time: each holds the card's memory
        spec = autoglm_spec(f"autoglm {mode}", model_dir, quantization=mode, max_batch_size=16)
        with launched([spec], log_dir) as servers:
            runs.update(sweep_servers(servers, prompt, gload, {spec.name: model_dir.name}))
    peak = _peak_bandwidth_gbps(card.get("name", ""))
    util = {}
    for mode in modes:
        tok_s = runs[f"autoglm {mode}"][0]["output_throughput"] if gload.concurrencies[0] == 1 else None
        if tok_s and peak:
            util[mode] = fp[mode]["bytes"] * tok_s / (peak * 1e9)
    return {
        "card": card,
        "peak_bandwidth_gbps": peak,
        "model": model_dir.name,
        "footprint": fp,
        "runs": runs,
        "bandwidth_utilisation_batch1": util,
        "targets": _ratio_targets(fp, model_dir.name, "bf16"),
    }


# --- main ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("bench-results/runtime.json"))
    p.add_argument("--sections", nargs="+", default=["batching", "quantization", "gpu"])
    p.add_argument("--input-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, nargs="+", default=[4, 8, 32], help="per concurrency level")
    p.add_argument(
        "--max-duration", type=float, default=45.0, help="seconds per run before new requests stop"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per server")
    p.add_argument("--quant-modes", nargs="+", default=["none", "bf16", "int8", "nf4"])
    p.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    p.add_argument(
        "--batching-model",
        default="smollm2",
        help="batching section: smollm2 (default), random (~150M GLM), or a folder",
    )
    p.add_argument(
        "--batching-quantization", default="none", help="batching section: --quantization of every server"
    )
    p.add_argument("--rounds", type=int, default=1, help="batching section: rounds (fastest kept)")
    p.add_argument("--quant-rounds", type=int, default=2, help="quantization section: rounds (fastest kept)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run `finally` blocks: stop the servers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if len(args.requests) != len(args.concurrency):
        p.error("--requests needs one value per --concurrency value")
    load = Load(
        args.input_tokens, args.output_tokens, tuple(args.concurrency), tuple(args.requests), args.max_duration,
        args.threads,
    )  # fmt: skip
    from autoglm_runtime.devmodels import packaged_smollm2
    from benchmarks.machine import describe

    log_dir = args.out.parent / "logs"
    smollm2 = packaged_smollm2()
    if args.batching_model == "smollm2":
        batching_model = smollm2
    elif args.batching_model == "random":
        batching_model = random_glm(150_000_000, "random-glm-150m")
    else:
        batching_model = Path(args.batching_model)
    started = time.time()
    result: dict[str, Any] = {
        "machine": describe(),
        "load": load.__dict__,
        "load_average_start": os.getloadavg(),
        "command": "python -m benchmarks.runtime_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if "batching" in args.sections:
        result["batching"] = batching_section(
            batching_model,
            load,
            log_dir,
            with_peer=not args.no_peer,
            rounds=args.rounds,
            quantization=args.batching_quantization,
        )
    if "quantization" in args.sections:
        result["quantization"] = quantization_section(
            load, log_dir, smollm2, args.quant_modes, args.quant_rounds
        )
    if "gpu" in args.sections:
        result["gpu"] = gpu_section(load, log_dir)
    result["load_average_end"] = os.getloadavg()
    result["duration_s"] = time.time() - started
    result["targets"] = [
        t for s in ("batching", "quantization", "gpu") for t in result.get(s, {}).get("targets", [])
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for t in result["targets"]:
        print(t["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
