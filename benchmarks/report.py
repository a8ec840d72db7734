"""Turn ``bench-results/*.json`` into ``bench-results/results.json``, ``docs/benchmarks.md`` and
``docs/img/bench-*.png`` (matplotlib, Agg). Numbers in the docs come only from the JSON files;
the prose around them lives in ``benchmarks/notes.md`` and is copied in as written.

``python -m benchmarks.report --results bench-results --docs docs``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.targets import fmt_number

REPO = Path(__file__).resolve().parent.parent
PARTS = ("runtime", "overhead", "engine", "routing", "operator", "agent")


def load(results: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in PARTS:
        f = results / f"{part}.json"
        if f.is_file():
            merged[part] = json.loads(f.read_text())
    run_file = results / "run.json"
    if run_file.is_file():
        merged["run"] = json.loads(run_file.read_text())
    merged["targets"] = [t for part in PARTS for t in merged.get(part, {}).get("targets", [])]
    return merged


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# --- plots ------------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runtime(batching: dict[str, Any], load: dict[str, Any], img: Path) -> list[str]:
    plt = _plt()
    conc = load["concurrencies"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in batching["runs"].items():
        axes[0].plot(conc, [r["output_throughput"] for r in runs], marker="o", label=name)
        axes[1].plot(conc, [r["ttft"]["p99_ms"] / 1000 for r in runs], marker="o", label=name)
    axes[0].set(title="output tokens/s", xlabel="concurrent requests", xscale="log")
    axes[1].set(
        title="time to first token, p99 (s)", xlabel="concurrent requests", xscale="log", yscale="log"
    )
    for ax in axes:
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{batching['model']}: {load['input_tokens']} tokens in, {load['output_tokens']} out")
    fig.tight_layout()
    path = img / "bench-runtime-batching.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def plot_quantization(q: dict[str, Any], img: Path) -> list[str]:
    plt = _plt()
    modes = list(q["throughput"])
    fp = q["footprint"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].bar([m for m in modes if m in fp], [fp[m]["mib"] for m in modes if m in fp], color="tab:blue")
    axes[0].set(title=f"weight footprint (MiB), {q['model']}")
    axes[1].bar(modes, [q["throughput"][m]["output_throughput"] for m in modes], color="tab:green")
    axes[1].set(title=f"output tokens/s at concurrency {q['concurrency']}")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = img / "bench-quantization.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def plot_operator(op: dict[str, Any], img: Path) -> list[str]:
    plt = _plt()
    scale = op["scale"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sizes = sorted(scale["bursts"], key=int)
    axes[0].bar([str(s) for s in sizes], [scale["bursts"][s]["cr_per_s"] for s in sizes], color="tab:purple")
    axes[0].set(title="burst throughput (CR/s)", xlabel="CRs created at once")
    samples = scale["soak"]["samples"]
    axes[1].plot([s["t_s"] for s in samples], [s["rss_mib"] for s in samples], marker=".")
    axes[1].axhline(scale["rss_idle_mib"], color="gray", linestyle="--", label="idle (1 CR)")
    axes[1].set(title=f"operator RSS (MiB) during the soak, {scale['managed_crs']} CRs", xlabel="seconds")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(fontsize=8, loc="lower left")
    counted = [(x["t_s"], x["reconciles"]) for x in samples if x.get("reconciles") is not None]
    if len(counted) > 1:
        twin = axes[1].twinx()
        base = counted[0][1]
        twin.plot([t for t, _ in counted], [c - base for _, c in counted], color="tab:orange", alpha=0.7)
        twin.set_ylabel("reconciles since the soak began", color="tab:orange")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = img / "bench-operator.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


# --- markdown ------------------------------------------------------------------------------------------
def machine_section(m: dict[str, Any]) -> str:
    v = m.get("versions", {})
    gpu = m.get("gpu")
    rows = [
        ("CPU", f"{m.get('cpu')} — {m.get('cores')} cores"),
        ("memory", f"{m.get('memory_gib')} GiB"),
        ("GPU", f"{gpu['name']} ({gpu['memory_gib']} GiB)" if gpu else "none (CUDA not available)"),
        ("OS / Python", f"{m.get('os')} / {m.get('python')}"),
        (
            "torch / transformers / bitsandbytes",
            f"{v.get('torch')} / {v.get('transformers')} / {v.get('bitsandbytes')}",
        ),
        ("kopf / kmock", f"{v.get('kopf')} / {v.get('kmock')}"),
        ("git", m.get("git") or "–"),
    ]
    return table(["", ""], rows)


def _run_row(name: str, r: dict[str, Any]) -> list[str]:
    return [
        name,
        str(r["workload"]["concurrency"]),
        f"{r['completed']}/{r['completed'] + r['errors'] + r.get('skipped', 0)}",
        _f(r["output_throughput"]),
        _f(r["request_throughput"], 2),
        _f(r["ttft"]["p50_ms"], 0),
        _f(r["ttft"]["p99_ms"], 0),
        _f(r["tpot"]["p50_ms"], 0),
        _f(r["itl"]["p99_ms"], 0),
        _f(r["e2e"]["p50_ms"], 0),
        _f(r["e2e"]["p99_ms"], 0),
        str(r["errors"]),
    ]


RUN_HEADER = [
    "server", "conc.", "done", "out tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "ITL p99 ms",
    "e2e p50 ms", "e2e p99 ms", "errors",
]  # fmt: skip


def runtime_section(rt: dict[str, Any], img: Path) -> tuple[str, list[str]]:
    out: list[str] = []
    images: list[str] = []
    load = rt["load"]
    out.append(
        f"Load: {load['input_tokens']} prompt tokens, exactly {load['output_tokens']} output tokens per request "
        f"(forced: `min_tokens` for the runtime, `generation_config.min_new_tokens` for transformers serve), "
        f"greedy, streaming; concurrency {', '.join(map(str, load['concurrencies']))} with "
        f"{', '.join(map(str, load['requests']))} requests; no new request after {load['max_duration_s']:g} s "
        f"of a run; {load['threads']} torch thread(s) per server. Load average "
        f"{_f(rt['load_average_start'][0])} at the start, {_f(rt['load_average_end'][0])} at the end."
    )
    b = rt.get("batching")
    if b:
        out.append(f"\n### Batching and the peer ({b['model']})\n")
        rows = []
        for name, runs in b["runs"].items():
            rows += [_run_row(name, r) for r in runs]
        out.append(table(RUN_HEADER, rows))
        out.append("")
        out.append(
            table(
                ["server", "command", "ready within s", "RSS MiB (ready)", "idle CPU"],
                [
                    [
                        n,
                        f"`{f['argv']}`",
                        _f(f["ready_s"]),
                        _f(f["rss_mib_ready"], 0),
                        f"{100 * f['idle_cpu_fraction']:.0f}%",
                    ]
                    for n, f in b["servers"].items()
                ],
            )
        )
        if "ratios" in b:
            out.append("")
            out.append(
                "Ratios at the top concurrency: "
                + ", ".join(f"{k.replace('_', ' ')} **{v:.2f}x**" for k, v in b["ratios"].items())
                + "."
            )
        prof = b.get("profile_batched_top")
        if prof and prof.get("samples"):
            out.append(
                f"\nWhere the batched server's time goes at the top concurrency (py-spy, {prof['samples']} samples "
                "in an extra run): "
                + ", ".join(f"{k} {v:.0%}" for k, v in prof["phases"].items() if v >= 0.005)
                + "; innermost functions: "
                + ", ".join(f"`{k}` {v:.0%}" for k, v in list(prof["top_leaf_functions"].items())[:4])
                + "."
            )
        images += plot_runtime(b, load, img)
        out.append("\n![throughput and TTFT per concurrency](img/bench-runtime-batching.png)")
    q = rt.get("quantization")
    if q:
        out.append(f"\n### Quantization ({q['model']}, {q['parameters'] / 1e6:.0f} M parameters)\n")
        base = q["footprint"]["bf16"]["bytes"]
        rows = []
        for mode, fp in q["footprint"].items():
            th = q["throughput"].get(mode)
            rows.append(
                [
                    mode,
                    _f(fp["mib"], 0),
                    f"{fp['bytes'] / base:.3f}",
                    _f(th["output_throughput"]) if th else "–",
                    _f(th["tpot"]["p50_ms"], 0) if th else "–",
                    _f(q["servers"].get(f"autoglm {mode}", {}).get("rss_mib_ready"), 0),
                ]
            )
        out.append(
            table(
                [
                    "mode",
                    "weights MiB",
                    "/ bf16",
                    f"out tok/s (conc. {q['concurrency']})",
                    "TPOT p50 ms",
                    "server RSS MiB",
                ],
                rows,
            )
        )
        real = q.get("footprint_smollm2")
        if real:
            rb = real["bf16"]["bytes"]
            out.append(
                "\nThe same on the real SmolLM2-135M (its tied 28 M-parameter embedding stays 16-bit under "
                "bitsandbytes, so the ratios are higher): "
                + ", ".join(f"{m} {fp['mib']:.0f} MiB ({fp['bytes'] / rb:.2f}x)" for m, fp in real.items())
                + "."
            )
        images += plot_quantization(q, img)
        out.append("\n![footprint and throughput per mode](img/bench-quantization.png)")
    g = rt.get("gpu")
    if g is not None:
        out.append("\n### GPU\n")
        if g.get("skipped"):
            out.append(f"Skipped: {g['skipped']}. On a machine with CUDA the same script runs a ~1.2 B random GLM "
                       "in bf16/int8/nf4 and reports the card, footprints and batch-1 bandwidth utilisation.")  # fmt: skip
        else:
            out.append(
                f"Card: {g['card'].get('name')}, peak bandwidth {g.get('peak_bandwidth_gbps')} GB/s.\n"
            )
            rows = []
            for name, runs in g["runs"].items():
                rows += [_run_row(name, r) for r in runs]
            out.append(table(RUN_HEADER, rows))
            out.append(
                "\nBatch-1 bandwidth utilisation (weight bytes x tokens/s / peak): "
                + ", ".join(f"{m} {u:.0%}" for m, u in g.get("bandwidth_utilisation_batch1", {}).items())
            )
    return "\n".join(out), images


def overhead_section(o: dict[str, Any]) -> str:
    rows = []
    for case, servers in o["cases"].items():
        for name, r in servers.items():
            rows.append(
                [case, name, _f(r["e2e"]["p50_ms"], 2), _f(r["e2e"]["p99_ms"], 2), _f(r["ttft"]["p50_ms"], 2)]
            )
    return (
        f"Stub model (returns a fixed token at once), tokenizer of {o['model_tokenizer']}, one request at a time, "
        f"{o['requests_per_round']} requests x {o['rounds']} rounds (best round kept); the runtime's default batch "
        f"window is {o['default_batch_window_ms']:g} ms. Client time is included in every number.\n\n"
        + table(["case", "server", "e2e p50 ms", "e2e p99 ms", "TTFT p50 ms"], rows)
    )


def operator_section(op: dict[str, Any], img: Path) -> tuple[str, list[str]]:
    w, s, n = op["writes"], op["scale"], op["noop"]
    out = [f"Children per CR: {', '.join(op['children'])}.\n"]
    out.append(
        table(
            ["event", "writes (client verb resource: count)"],
            [
                ["create", ", ".join(f"{k}: {v}" for k, v in w["create"].items())],
                [
                    f"3 resyncs, nothing changed (period {w['resync_seconds']:g} s)",
                    ", ".join(f"{k}: {v}" for k, v in w["resync_3_periods"].items()) or "none",
                ],
                ["spec change (quantization)", ", ".join(f"{k}: {v}" for k, v in w["spec_change"].items())],
            ],  # fmt: skip
        )
    )
    lat = s["latency"]
    out.append(
        f"\nCR created → all children present, one CR at a time (n={lat['n']}): p50 **{lat['p50_ms']:.0f} ms**, "
        f"p99 **{lat['p99_ms']:.0f} ms**.\n"
    )
    rows = [
        [k, _f(v["seconds"]), _f(v["cr_per_s"]), _f(v["cpu_ms_per_cr"]), _f(v["operator_cpu_s"]),
         _f(v.get("emulator_process_cpu_s")), _f(v["rss_mib_after"], 0)]
        for k, v in sorted(s["bursts"].items(), key=lambda kv: int(kv[0]))
    ]  # fmt: skip
    rows.append(
        [f"{n['n']} (no-op kopf handler)", _f(n["seconds"]), _f(n["n"] / n["seconds"]), _f(n["cpu_ms_per_cr"]),
         _f(n["operator_cpu_s"]), "–", "–"]
    )  # fmt: skip
    header = ["burst (CRs)", "seconds to all children", "CR/s", "operator CPU ms per CR", "operator CPU s",
              "emulator + client CPU s", "RSS MiB after"]  # fmt: skip
    out.append(table(header, rows))
    soak = s["soak"]
    rss = [x["rss_mib"] for x in soak["samples"]]
    out.append(
        f"\nRSS: idle (1 CR) {s['rss_idle_mib']:.0f} MiB, after the bursts {s['rss_loaded_mib']:.0f} MiB; soak of "
        f"{soak['seconds']:g} s with {s['managed_crs']} CRs and a {s['resync_seconds']:g} s resync period: "
        f"{min(rss):.0f}–{max(rss):.0f} MiB, operator CPU {soak['samples'][-1]['cpu_s']:.1f} s."
    )
    images = plot_operator(op, img)
    out.append("\n![burst throughput and RSS over the soak](img/bench-operator.png)")
    return "\n".join(out), images


def targets_section(targets: Sequence[dict[str, Any]]) -> str:
    rows = []
    for t in targets:
        m = t["measured"]
        shown = (
            "–"
            if m is None
            else (f"{fmt_number(m)} {t['unit']}".strip() if isinstance(m, float) else f"{m} {t['unit']}")
        )
        rows.append([f"**{t['status']}**", t["name"], t["target"], shown, t["note"]])
    return table(["", "target", "goal", "measured", "note"], rows)


def _could_not_run(name: str, error: str, columns: int) -> list[str]:
    """A table row for a server that could not run: its name, the error's first line, dashes."""
    return [name, "could not run: " + error.splitlines()[0][:120], *["–"] * (columns - 2)]


def _ratio_lines(ratios: dict[str, Any]) -> str:
    return "\n".join(f"- {k}: **{v}x**" for k, v in ratios.items())


def agent_section(a: dict[str, Any]) -> str:
    w = a["workload"]
    rows = []
    for name, r in a["servers"].items():
        if "error" in r:
            rows.append(_could_not_run(name, r["error"], 4))
            continue
        lat = r.get("step_latency_s") or {}
        rows.append(
            [
                name,
                _f(r["steps_per_s"], 3),
                _f(lat.get("p50"), 2),
                _f(lat.get("p95"), 2),
            ]
        )
    ratios = _ratio_lines(a.get("ratios", {}))
    return (
        f"{w['sessions']} concurrent simulated phone-agent sessions x {w['steps_per_session']} steps; every step "
        f"sends the system prompt, the image-stripped history and a fresh {w['screenshot']}, "
        f"{w['output_tokens']} output tokens; {w['model']}.\n\n"
        + table(["server", "steps/s", "step p50 s", "step p95 s"], rows)
        + ("\n\n" + ratios if ratios else "")
    )


def engine_section(e: dict[str, Any]) -> str:
    out = [
        f"Models {e.get('model', '?')}; the agent workload on {e.get('prefix', {}).get('model', '?')}, the stall and memory runs on {e.get('stall', {}).get('model', '?')}."
    ]
    prefix = e.get("prefix")
    if prefix:
        w = prefix["workload"]
        out.append(
            f"\n### Prefix reuse: a text agent workload\n\n{w['sessions']} concurrent sessions, a "
            f"{w['system_prompt_tokens']}-token system prompt they share, {w['steps']} steps whose history "
            f"grows, {w['output_tokens']} output tokens per step, streamed.\n"
        )
        rows = []
        for name, r in prefix["servers"].items():
            if "error" in r:
                rows.append(_could_not_run(name, r["error"], 5))
                continue
            per_step = " / ".join(_f(x, 2) for x in r["ttft_p50_s_per_step"])
            rows.append(
                [
                    name,
                    per_step,
                    _f(r["ttft_p50_s_step3_on"], 2),
                    _f(r["output_tokens_per_s"], 1),
                    r["errors"],
                ]
            )
        out.append(
            table(["server", "TTFT p50 s per step", "TTFT p50 s, step 3+", "out tok/s", "errors"], rows)
        )
        out.append("\n" + _ratio_lines(prefix.get("ratios", {})))
    stall = e.get("stall")
    if stall:
        w = stall["workload"]
        out.append(
            f"\n### A long prompt among running streams\n\n{w['streams']} streams decoding "
            f"({w['stream_tokens']} tokens each) when a {w['long_prompt_tokens']}-token prompt arrives.\n"
        )
        rows = [
            [name, _f(r["max_gap_s"], 3), _f(r["p50_gap_s"], 4), _f(r["long_prompt_s"], 2), _f(r["budgeted_step_s"], 3),
             _f(r["peak_above_loaded_mib"], 1)]
            for name, r in stall["runs"].items()
        ]  # fmt: skip
        out.append(
            table(
                [
                    "engine",
                    "longest gap s",
                    "gap p50 s",
                    "long prompt s",
                    "one step s",
                    "peak RSS above loaded MiB",
                ],
                rows,
            )
        )
        m = stall["memory"]
        out.append(
            f"\nMemory (budgeted run): measured {m['measured_peak_above_loaded_mib']} MiB above the loaded model; "
            f"predicted {m['predicted_mib']} MiB = KV pool {m['pool_mib']} + activations {m['activation_mib']} + "
            f"fragmentation (`autoglm_runtime.kvplan`, the estimator's formula): **{m['measured / predicted']}x**."
        )
    return "\n".join(out)


def routing_section(r: dict[str, Any]) -> str:
    """Round-robin vs the picker's scoring over several replicas (``benchmarks.routing_bench``)."""
    out = [
        f"**{r.get('what', 'a simulation of the policy, not the picker').capitalize()}**; "
        f"{r.get('model', '?')}. Each policy gets fresh replicas, each warmed with one request; policies "
        "alternate over rounds; the table shows each policy's fastest round, the target the median of "
        "the rounds' ratios."
    ]
    for run in r.get("runs", []):
        w = run["workload"]
        rows = []
        for name, p in run["policies"].items():
            if "error" in p:
                rows.append(_could_not_run(name, p["error"], 10))
                continue
            rows.append(
                [
                    name,
                    " / ".join(_f(x, 2) for x in p["ttft_p50_s_per_step"]),
                    _f(p["ttft_p50_s_step3_on"], 2),
                    _f(p.get("step_p50_s_step3_on"), 2),
                    _f(p["output_tokens_per_s"], 1),
                    " / ".join(str(n) for n in p.get("sessions_per_replica", [])),
                    " / ".join(str(n) for n in p.get("requests_per_replica", [])),
                    " / ".join(_f(x, 2) for x in p.get("prefix_hit_ratio_per_replica", [])),
                    _f(p.get("uncached_tokens_p50_step3_on"), 0),
                    p["errors"],
                ]
            )
        out.append(
            f"\n### {run['name']}\n\n{w['replicas']} replicas on loopback, {w['sessions']} concurrent sessions, "
            f"a {w['system_prompt_tokens']}-token system prompt they share, {w['steps']} steps whose history "
            f"grows by the step's user message and a {w['reply_tokens']}-token assistant reply, "
            f"{w['output_tokens']} output tokens per step, streamed"
            + (
                f"; {w['think_s']:g} s (0.5x..1.5x) between a reply and the next step"
                if w.get("think_s")
                else ""
            )
            + ".\n"
        )
        header = ["policy", "TTFT p50 s per step", "TTFT p50 s, step 3+", "step p50 s, step 3+", "out tok/s",
                  "sessions per replica (step 1)", "requests per replica", "prefix-hit ratio per replica",
                  "uncached prompt tokens p50, step 3+", "errors"]  # fmt: skip
        out.append(table(header, rows))
        out.append("\nOf the rounds in the table:\n\n" + _ratio_lines(run.get("ratios", {})))
        per_round = run.get("ttft_p50_s_step3_on_per_round")
        if per_round:
            shown = "; ".join(f"{p} " + " / ".join(_f(x, 2) for x in v) for p, v in per_round.items())
            out.append(f"- TTFT p50 s from step 3 per round (the fastest is in the table): {shown}")
        ratios = run.get("ttft_ratio_per_round")
        if ratios:
            shown = "; ".join(
                f"{p} " + " / ".join(_f(x, 2) for x in v) + f" (median {_f(statistics.median(v), 2)})"
                for p, v in ratios.items()
                if v
            )
            out.append(f"- TTFT p50 from step 3, round-robin / policy, per round: {shown}")
        ceiling = run.get("ceiling")
        if ceiling:
            fit = ceiling["probe"]["fit"]
            out.append(
                "\nCeiling: one request alone on a warm replica takes "
                f"{_f(fit['intercept_s'], 3)} s + {_f(fit['s_per_uncached_token'] * 1000, 2)} ms per uncached "
                "prompt token to its first token (fitted); applied to each policy's uncached tokens per "
                "request from step 3 on (the engine's cache replayed on its placements; \"perfect "
                "affinity\": every session's previous prompt cached where it goes):\n"
            )
            rows = [
                [
                    name,
                    _f(c["uncached_tokens_p50_step3_on"], 0),
                    _f(c["predicted_ttft_p50_s_step3_on"], 2),
                    f"{c['ttft_ceiling_vs_round_robin']}x" if "ttft_ceiling_vs_round_robin" in c else "–",
                ]
                for name, c in ceiling["policies"].items()
            ]
            out.append(
                table(
                    ["placement", "uncached tokens p50, step 3+", "TTFT alone p50 s", "round-robin / it"],
                    rows,
                )
            )
    return "\n".join(out)


def render(data: dict[str, Any], docs: Path, notes: Path | None) -> str:
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Benchmarks\n",
        "<!-- Generated by `make bench` (benchmarks/report.py) from bench-results/*.json; edit "
        "benchmarks/notes.md for the prose, not this file. -->\n",
    ]
    run = data.get("run", {})
    machine = (data.get("runtime") or data.get("operator") or {}).get("machine")
    parts.append("## How these numbers were made\n")
    cmds = run.get("commands") or [data[p]["command"] for p in PARTS if p in data and "command" in data[p]]
    parts.append(
        "Everything below comes from one `make bench` run"
        + (f" ({run['started']}, {run['duration_s'] / 60:.1f} min)" if "duration_s" in run else "")
        + ". Servers that are compared run side by side and are measured in alternation, so a slower "
        "or faster moment of the machine hits them alike; compare the ratios, not the absolute numbers. "
        "The commands:\n\n```sh\n" + "\n".join(cmds) + "\n```\n"
    )
    if machine:
        parts.append(machine_section(machine) + "\n")
    if data["targets"]:
        parts.append("## Targets\n")
        parts.append(targets_section(data["targets"]) + "\n")
    if notes is not None and notes.is_file():
        parts.append(notes.read_text().strip() + "\n")
    if "runtime" in data:
        text, _ = runtime_section(data["runtime"], img)
        parts.append("## Runtime\n\n" + text + "\n")
    if "overhead" in data:
        parts.append("## Server overhead\n\n" + overhead_section(data["overhead"]) + "\n")
    if "engine" in data:
        parts.append(
            "## Engine: token budget, KV pool, prefix reuse\n\n" + engine_section(data["engine"]) + "\n"
        )
    if "routing" in data:
        parts.append(
            "## Routing across replicas: what the picker's scoring is worth (simulated)\n\n"
            + routing_section(data["routing"])
            + "\n"
        )
    if "agent" in data:
        parts.append("## Phone-agent workload (images)\n\n" + agent_section(data["agent"]) + "\n")
    if "operator" in data:
        text, _ = operator_section(data["operator"], img)
        parts.append("## Operator\n\n" + text + "\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--results", type=Path, default=REPO / "bench-results")
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    p.add_argument("--notes", type=Path, default=REPO / "benchmarks" / "notes.md")
    args = p.parse_args(argv)
    data = load(args.results)
    if not any(part in data for part in PARTS):
        p.error(f"no results in {args.results}: run `make bench` first")
    (args.results / "results.json").write_text(json.dumps(data, indent=2, default=str))
    md = render(data, args.docs, args.notes)
    (args.docs / "benchmarks.md").write_text(md)
    for t in data["targets"]:
        print(t["line"])
    print(f"wrote {args.docs / 'benchmarks.md'} and {args.docs / 'img'}/bench-*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
