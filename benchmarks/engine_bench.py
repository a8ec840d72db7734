"""The engine's token budget, KV block pool and prefix cache, measured side by side in one run.

Models, fp32 on the CPU, one torch thread per server; servers run one after the other (side by
side they would share the CPU): the agent workload runs on a random GLM of ~30 M parameters (its
1,500-token prompts would take minutes per step on a 135 M model here: ``--agent-model smollm2``
for that), the stall and memory runs on the packaged SmolLM2-135M-Instruct (a real model).

1. prefix — a text agent workload: ``--sessions`` concurrent sessions, a ~1,500-token system
   prompt they share, ``--steps`` steps each whose history grows (user message + a fixed assistant
   answer per step), streamed, ``--output-tokens`` forced. TTFT p50 per step with the prefix cache
   on vs off (``--no-prefix-caching``); the same workload against ``transformers serve
   --continuous-batching`` (throughput and TTFT p50).
2. stall — ``--streams`` streams decoding when one ~4,000-token prompt arrives: the longest gap
   between two tokens of a running stream with the step token budget (the CPU default, 512) vs
   without one (``--max-batch-tokens 8192``: the prompt in one step, as the engine did before).
3. memory — in the budgeted stall run, the server's peak resident memory above what it held after
   loading (``VmHWM`` after ``clear_refs``) vs what :mod:`autoglm_runtime.kvplan` — the operator's
   estimator — predicts for those settings: activations of one step + the KV pool + fragmentation.

``python -m benchmarks.engine_bench --out bench-results/engine.json [--sections prefix stall]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from benchmarks.loadgen import BACKENDS, Workload, percentile, send_request
from benchmarks.servers import ServerSpec, autoglm_spec, hf_serve_spec, launched
from benchmarks.targets import target

REPO = Path(__file__).resolve().parent.parent
RULE = "Rule {i}: when the screen shows a dialog, read its title, then tap the button that matches the task. "
FIXED_ANSWER = 'do(action="Tap", element=[500,800])'
SERVED = ["--served-model-name", "bench"]  # the runtime requires `model`; transformers serve takes none


def _threads(spec: ServerSpec) -> ServerSpec:
    spec.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return spec


def _text_of_tokens(tokenizer: Any, tokens: int) -> str:
    text, i = "", 0
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += RULE.format(i=i)
        i += 1
    return text


# --- 1. prefix reuse on an agent workload ------------------------------------------------------------
class Router(Protocol):
    """Picks the replica for each request (``benchmarks.routing_bench``); one replica needs none."""

    def pick(self, messages: list[dict[str, str]]) -> int: ...

    def done(self, replica: int) -> None: ...

    def warmed(self, replica: int, messages: list[dict[str, str]]) -> None: ...


class _Only:
    def pick(self, messages: list[dict[str, str]]) -> int:
        return 0

    def done(self, replica: int) -> None:
        return None

    def warmed(self, replica: int, messages: list[dict[str, str]]) -> None:
        return None


async def agent_run(
    base: str | Sequence[str],
    backend: str,
    system: str,
    sessions: int,
    steps: int,
    output_tokens: int,
    *,
    router: Router | None = None,
    answer: str = FIXED_ANSWER,
    think_s: float = 0.0,
    settle_s: float = 0.0,
) -> dict[str, Any]:
    """The agent workload against one server, or several behind ``router`` (every one warmed once).

    ``answer`` is the assistant turn each step adds to the history (the agent's reply); ``think_s``
    is the mean pause between a reply and the next step (the phone acting and taking a screenshot),
    drawn per step from 0.5x..1.5x of it with a fixed seed per session. ``settle_s``: a pause between
    the warm-ups and the sessions (a router that scrapes load sees the warm-ups finished)."""
    bases = [base] if isinstance(base, str) else list(base)
    route: Router = router or _Only()
    workload = Workload(prompt="", endpoint="chat", backend=backend, timeout_s=900)
    ttft: list[list[float]] = [[] for _ in range(steps)]
    e2e: list[list[float]] = [[] for _ in range(steps)]
    tokens = 0
    errors: list[str] = []

    def body(history: list[dict[str, str]], session: int, step: int) -> dict[str, Any]:
        user = {"role": "user", "content": f"Session {session}, step {step}: the screen shows a list."}
        b: dict[str, Any] = {
            "messages": [{"role": "system", "content": system}, *history, user],
            "max_tokens": output_tokens,
            "temperature": 0.0,
            "stream": True,
        }
        if BACKENDS[backend].stream_usage:
            b["stream_options"] = {"include_usage": True}
        if backend == "autoglm":
            b["model"] = "bench"
        b.update(BACKENDS[backend].force_length(output_tokens))
        return b

    sent = [0] * len(bases)

    async def session(clients: list[httpx.AsyncClient], n: int) -> None:
        nonlocal tokens
        history: list[dict[str, str]] = []
        pauses = random.Random(n)
        for s in range(steps):
            if s and think_s:
                await asyncio.sleep(think_s * pauses.uniform(0.5, 1.5))
            b = body(history, n, s)
            replica = route.pick(b["messages"])
            sent[replica] += 1
            try:
                result = await send_request(clients[replica], workload, b)
            finally:
                route.done(replica)
            if not result.ok or result.ttft_s is None:
                errors.append(result.error or "no token")
                return
            ttft[s].append(result.ttft_s)
            e2e[s].append(result.e2e_s)
            tokens += result.output_tokens
            history += [b["messages"][-1], {"role": "assistant", "content": answer}]

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=b, timeout=900)) for b in bases]
        for i, client in enumerate(clients):  # warm-up (another session: no shared history)
            warm = body([], 99, 0)
            await send_request(client, workload, warm)
            route.warmed(i, warm["messages"])
        if settle_s:
            await asyncio.sleep(settle_s)
        started = time.perf_counter()
        await asyncio.gather(*(session(clients, n) for n in range(sessions)))
        duration = time.perf_counter() - started
    late = [t for s in ttft[2:] for t in s]
    return {
        "errors": len(errors),
        "error_examples": errors[:3],
        "duration_s": round(duration, 2),
        "output_tokens_per_s": round(tokens / duration, 2),
        "ttft_p50_s_per_step": [round(percentile(s, 50), 3) if s else None for s in ttft],
        "ttft_p50_s_step3_on": round(percentile(late, 50), 3) if late else None,
        "ttft_p50_s": round(percentile([t for s in ttft for t in s], 50), 3),
        **(
            {
                "requests_per_replica": sent,
                "step_p50_s_step3_on": round(percentile([t for s in e2e[2:] for t in s], 50), 3),
            }
            if len(bases) > 1
            else {}
        ),
    }


def prefix_section(args: argparse.Namespace, model: Path, tokenizer: Any, log_dir: Path) -> dict[str, Any]:
    system = _text_of_tokens(tokenizer, args.system_tokens)
    common = [*SERVED, "--max-input-tokens", "8192", "--max-new-tokens", "64"]
    specs = [
        autoglm_spec("prefix-on", model, max_batch_size=args.sessions, extra=common),
        autoglm_spec(
            "prefix-off", model, max_batch_size=args.sessions, extra=[*common, "--no-prefix-caching"]
        ),
    ]
    if not args.no_peer:
        specs.append(hf_serve_spec("transformers-serve-cb", model, extra=["--cb-num-blocks", "2048"]))
    out: dict[str, Any] = {
        "workload": {
            "sessions": args.sessions,
            "steps": args.steps,
            "system_prompt_tokens": len(tokenizer(system)["input_ids"]),
            "output_tokens": args.output_tokens,
        },
        "servers": {},
    }
    for spec in specs:
        try:
            with launched([_threads(spec)], log_dir) as (server,):
                result = asyncio.run(
                    agent_run(
                        server.spec.base_url,
                        spec.backend,
                        system,
                        args.sessions,
                        args.steps,
                        args.output_tokens,
                    )
                )
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is recorded, not fatal
            result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"[:300]}
        out["servers"][spec.name] = result
        print(spec.name, json.dumps(result), flush=True)
    on, off = out["servers"].get("prefix-on", {}), out["servers"].get("prefix-off", {})
    peer = out["servers"].get("transformers-serve-cb", {})
    ratios: dict[str, float] = {}
    if on.get("ttft_p50_s_step3_on") and off.get("ttft_p50_s_step3_on"):
        ratios["ttft p50 from step 3, off / on"] = round(
            off["ttft_p50_s_step3_on"] / on["ttft_p50_s_step3_on"], 2
        )
    if on.get("output_tokens_per_s") and peer.get("output_tokens_per_s"):
        ratios["throughput vs transformers serve CB"] = round(
            on["output_tokens_per_s"] / peer["output_tokens_per_s"], 2
        )
    if on.get("ttft_p50_s") and peer.get("ttft_p50_s"):
        ratios["ttft p50, transformers serve CB / ours"] = round(peer["ttft_p50_s"] / on["ttft_p50_s"], 2)
    out["ratios"] = ratios
    reuse = ratios.get("ttft p50 from step 3, off / on")
    out["targets"] = [
        target(
            "prefix reuse: TTFT p50 from step 3 on, reuse off / on (text agent)",
            ">= 3x",
            reuse,
            None if reuse is None else reuse >= 3,
            unit="x",
            note=f"{on.get('ttft_p50_s_step3_on')} s vs {off.get('ttft_p50_s_step3_on')} s",
        )
    ]
    peer_x = max(
        ratios.get("throughput vs transformers serve CB", 0),
        ratios.get("ttft p50, transformers serve CB / ours", 0),
    )
    out["targets"].append(
        target(
            "agent workload vs transformers serve --continuous-batching (throughput or TTFT p50)",
            ">= 1.3x",
            peer_x or None,
            None if not peer_x else peer_x >= 1.3,
            unit="x",
            note=(
                f"throughput {ratios.get('throughput vs transformers serve CB', 'n/a')}x, "
                f"TTFT p50 {ratios.get('ttft p50, transformers serve CB / ours', 'n/a')}x"
                + (f"; peer: {peer['error']}" if "error" in peer else "")
            ),
        )
    )
    return out


# --- 2 and 3. a long prompt among running streams; peak memory ---------------------------------------
def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def stall_run(base: str, streams: int, stream_tokens: int, long_prompt: str) -> dict[str, Any]:
    workload = Workload(prompt="", endpoint="completions", backend="autoglm", timeout_s=900)

    def body(prompt: str, n: int) -> dict[str, Any]:
        return {
            "prompt": prompt,
            "max_tokens": n,
            "temperature": 0.0,
            "stream": True,
            "model": "bench",
            **BACKENDS["autoglm"].force_length(n),
        }

    async with httpx.AsyncClient(base_url=base, timeout=900) as client:
        await send_request(client, workload, body("warm up", 2))
        running = [
            asyncio.create_task(send_request(client, workload, body(f"Stream {i}:", stream_tokens)))
            for i in range(streams)
        ]
        await asyncio.sleep(2.0)  # the streams are decoding
        sent = time.perf_counter()
        long = await send_request(client, workload, body(long_prompt, 1))
        long_s = time.perf_counter() - sent
        results = await asyncio.gather(*running)
    gaps = [g for r in results for g in r.itl_s]
    return {
        "errors": sum(not r.ok for r in results) + (not long.ok),
        "long_prompt_s": round(long_s, 3),
        "max_gap_s": round(max(gaps), 3) if gaps else None,
        "p50_gap_s": round(percentile(gaps, 50), 4) if gaps else None,
    }


def stall_section(args: argparse.Namespace, model: Path, tokenizer: Any, log_dir: Path) -> dict[str, Any]:
    from autoglm_runtime import kvplan

    long_prompt = _text_of_tokens(tokenizer, args.long_tokens)
    long_tokens = len(tokenizer(long_prompt)["input_ids"])
    config = json.loads((model / "config.json").read_text())
    kv_per_token = kvplan.kv_bytes_per_token(
        config["num_hidden_layers"], config["num_key_value_heads"],
        config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"], 4,
    )  # fmt: skip
    budget = kvplan.step_tokens(None, args.streams, on_gpu=False)
    # A pool just big enough for the streams at their longest and the long prompt.
    pool_tokens = (
        args.streams * kvplan.blocks_for(8 + args.stream_tokens) * 16
        + kvplan.blocks_for(long_tokens + 1) * 16
    )
    common = [
        *SERVED,
        "--max-input-tokens", str(long_tokens + 64), "--max-new-tokens", str(args.stream_tokens),
        "--kv-cache-tokens", str(pool_tokens), "--no-prefix-caching",
    ]  # fmt: skip
    runs = {
        f"budget {budget}": [*common],
        "no budget (8192)": [*common, "--max-batch-tokens", "8192"],
    }
    out: dict[str, Any] = {
        "workload": {
            "streams": args.streams,
            "stream_tokens": args.stream_tokens,
            "long_prompt_tokens": long_tokens,
        },
        "runs": {},
    }
    for name, extra in runs.items():
        spec = _threads(autoglm_spec(name.split()[0], model, max_batch_size=args.streams + 1, extra=extra))
        with launched([spec], log_dir) as (server,):
            pid = server.proc.pid
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
            before = _status_kib(pid, "VmRSS")
            result = asyncio.run(
                stall_run(server.spec.base_url, args.streams, args.stream_tokens, long_prompt)
            )
            result["rss_before_mib"] = round(before / 1024, 1)
            result["peak_above_loaded_mib"] = round((_status_kib(pid, "VmHWM") - before) / 1024, 1)
        chunks = math.ceil(long_tokens / max(1, budget - args.streams)) if name.startswith("budget") else 1
        result["budgeted_step_s"] = round(result["long_prompt_s"] / chunks, 3)
        out["runs"][name] = result
        print(name, json.dumps(result), flush=True)
    with_budget = out["runs"][f"budget {budget}"]
    without = out["runs"]["no budget (8192)"]
    activation = kvplan.activation_bytes(
        hidden_size=config["hidden_size"], mlp_width=config["intermediate_size"], vocab_size=config["vocab_size"],
        quantization="none", batch_tokens=budget, max_rows=args.streams + 1, dtype_bytes=4,
    )  # fmt: skip
    pool = pool_tokens * kv_per_token
    predicted = pool + activation + kvplan.fragmentation_bytes(pool + activation)
    out["memory"] = {
        "predicted_mib": round(predicted / 2**20, 1),
        "pool_mib": round(pool / 2**20, 1),
        "activation_mib": round(activation / 2**20, 1),
        "measured_peak_above_loaded_mib": with_budget["peak_above_loaded_mib"],
        "measured / predicted": round(with_budget["peak_above_loaded_mib"] * 2**20 / predicted, 2),
    }
    steps = with_budget["max_gap_s"] / with_budget["budgeted_step_s"]
    ratio = out["memory"]["measured / predicted"]
    out["ratios"] = {
        "max gap, no budget / budget": round(without["max_gap_s"] / with_budget["max_gap_s"], 2),
        "max gap / budgeted step": round(steps, 2),
        "peak memory measured / predicted": ratio,
    }
    out["targets"] = [
        target(
            f"stall: longest gap of {args.streams} streams while a {long_tokens}-token prompt prefills",
            "<= 2 budgeted steps",
            round(steps, 2),
            steps <= 2,
            unit="steps",
            note=(
                f"{with_budget['max_gap_s']} s with the budget vs {without['max_gap_s']} s without; "
                f"one budgeted step {with_budget['budgeted_step_s']} s"
            ),
        ),
        target(
            "peak memory above the loaded model (CPU RSS) vs the estimator's prediction",
            "within 25%",
            ratio,
            0.75 <= ratio <= 1.25,
            unit="x",
            note=(
                f"{out['memory']['measured_peak_above_loaded_mib']} MiB measured, "
                f"{out['memory']['predicted_mib']} MiB predicted"
            ),
        ),
        target(
            "peak GPU memory above the loaded model vs the estimator's prediction",
            "within 10%",
            None,
            None,
            note="no CUDA on this machine: runs where a GPU is present (tests/runtime/test_gpu.py)",
        ),
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "engine.json")
    p.add_argument("--sections", nargs="+", default=["prefix", "stall"], choices=["prefix", "stall"])
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--system-tokens", type=int, default=1500)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--stream-tokens", type=int, default=160)
    p.add_argument("--long-tokens", type=int, default=4000)
    p.add_argument("--no-peer", action="store_true", help="leave out transformers serve")
    p.add_argument("--agent-model", choices=["random", "smollm2"], default="random")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from autoglm_runtime.devmodels import build_random_glm, packaged_smollm2

    smollm2 = packaged_smollm2()
    log_dir = args.out.parent / "logs-engine"
    results: dict[str, Any] = {
        "model": "fp32 on the CPU, 1 torch thread per server",
        "command": "python -m benchmarks.engine_bench",
    }
    if "prefix" in args.sections:
        if args.agent_model == "random":
            agent = build_random_glm(
                Path(tempfile.mkdtemp(prefix="engine-bench-glm-")), target_params=30_000_000
            )
        else:
            agent = smollm2
        results["prefix"] = prefix_section(args, agent, AutoTokenizer.from_pretrained(agent), log_dir)
        results["prefix"]["model"] = (
            "random GLM, ~30 M parameters" if args.agent_model == "random" else "SmolLM2-135M"
        )
    if "stall" in args.sections:
        results["stall"] = stall_section(args, smollm2, AutoTokenizer.from_pretrained(smollm2), log_dir)
        results["stall"]["model"] = "SmolLM2-135M-Instruct"
    results["targets"] = [t for part in ("prefix", "stall") for t in results.get(part, {}).get("targets", [])]
    for t in results["targets"]:
        print(t["line"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v.get("ratios") for k, v in results.items() if isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
