"""``make gpu-check``: one command that tells, in under ten minutes, whether the runtime works on this
GPU and how fast — offline, from what ``make gpu-wheelhouse`` packed (``scripts/gpu-check.sh``
installs it into a temporary folder beside the machine's own torch and runs this module).

Parts, each a child process with its own timeout (a hang costs that part only), run in this order
under one deadline (``--budget-s``, 570 s on a GPU: a part that cannot finish in what is left is
skipped and says so):

1. ``pytest -m gpu`` — the GPU tests that exist (``tests/runtime/test_gpu.py``);
2. ``build-text`` / ``build-vision`` — a GLM-4-9B-shaped model and the GLM-4.1V / AutoGLM-Phone-9B
   shape (language model + vision tower), from the operator's built-in catalog configs, with random
   weights made on the device, saved in bf16 (no download);
3. ``load-<model>-<mode>`` for bf16, int8, nf4 where the estimator says the mode fits the card: the
   runtime's loader (load time), the weights' memory vs ``autoglm-operator estimate`` (target within
   5%), decode tokens/s at batch 1 through the engine and the memory bandwidth it achieves (weight
   bytes per token / time) against a measured device-to-device copy, then 16 streams plus a prompt of
   one full step budget: peak memory with the engine's KV pool vs the estimator's total (within 10%);
4. ``serve-text`` — the real HTTP server (``autoglm-runtime serve``): output tokens/s at 16 concurrent
   requests over 1 (target >= 6x), and the text agent workload with prefix reuse;
   ``serve-text-noprefix`` the same agent workload without it (TTFT ratio, target >= 3x);
5. ``serve-phone`` — the phone agent's step: one 1080x2400 screenshot (3,354 image tokens; 540x1200 on
   the tiny scale) + history;
6. ``transformers`` — side by side: transformers' own ``generate`` at batch 1 and its
   continuous-batching ``generate_batch`` with 16 prompts, on the same text model.

Without CUDA the same parts run at tiny scale on the CPU (CI runs that form, so the code cannot
rot); every number in the JSON says which device produced it. The table is printed last.

    python -m benchmarks.gpu_check --out build/gpu-check [--scale auto|gpu|tiny] [--parts ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu_parts import SCALES, Scale, machine, run_part
from benchmarks.servers import cuda_possible

REPO = Path(__file__).resolve().parent.parent

# Targets (docs/benchmarks.md, "On a GPU").
WEIGHTS_WITHIN = 0.05
PEAK_WITHIN = 0.10
BATCHING_X = 6.0
PREFIX_X = 3.0


# --- parts and the time budget ----------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One child process of the check. ``expected_s`` is the time planned for it on one H100-class
    GPU (extrapolated from the CPU form, see docs/benchmarks.md); ``timeout_s`` bounds it there;
    on the CPU form ``cpu_timeout_s`` does."""

    name: str
    what: str
    expected_s: int
    timeout_s: int
    cpu_timeout_s: int = 120
    needs: tuple[str, ...] = ()
    min_s: int = 20  # skipped when less than this is left of the budget


PARTS: tuple[Part, ...] = (
    Part("pytest-gpu", "pytest -m gpu (tests/runtime/test_gpu.py)", 45, 120, 90, min_s=30),
    Part("build-text", "GLM-4-9B shape, random bf16 weights made on the device", 35, 90),
    Part("load-text-bf16", "load, weights vs estimate, batch-1 decode, peak vs estimate", 35, 75,
         needs=("build-text",)),
    Part("serve-text", "HTTP server: 16 concurrent vs 1; text agent with prefix reuse", 55, 100,
         needs=("build-text",)),
    Part("serve-text-noprefix", "HTTP server: text agent without prefix reuse", 30, 70,
         needs=("build-text",)),
    Part("build-vision", "GLM-4.1V / AutoGLM-Phone-9B shape, random bf16 weights on the device", 40, 90),
    Part("load-vision-bf16", "load, weights vs estimate, batch-1 decode, peak vs estimate", 40, 80,
         needs=("build-vision",)),
    Part("serve-phone", "HTTP server: phone agent step, 1080x2400 screenshot + history", 40, 90,
         needs=("build-vision",)),
    Part("load-text-int8", "as load-text-bf16, bitsandbytes int8", 40, 80, needs=("build-text",)),
    Part("load-text-nf4", "as load-text-bf16, bitsandbytes nf4", 35, 75, needs=("build-text",)),
    Part("transformers", "transformers generate (batch 1) and generate_batch (16)", 45, 90,
         needs=("build-text",)),
    Part("load-vision-int8", "as load-vision-bf16, bitsandbytes int8", 40, 80, needs=("build-vision",)),
    Part("load-vision-nf4", "as load-vision-bf16, bitsandbytes nf4", 35, 75, needs=("build-vision",)),
)  # fmt: skip
PART_NAMES = [p.name for p in PARTS]
TOTAL_S = 600  # the whole check, install included, on one H100-class GPU
REPORT_S = 10  # the table and the JSON after the last part
GPU_BUDGET_S = 570  # the parts' deadline when the install's time is not known (30 s for it)
CPU_BUDGET_S = 300


def parts_budget(on_gpu: bool, started_epoch: float | None, now_epoch: float) -> float:
    """The parts' deadline: on a GPU what is left of ten minutes since ``scripts/gpu-check.sh``
    started (``GPU_CHECK_STARTED``: the install counts), less the report; on the CPU form 300 s."""
    if not on_gpu:
        return CPU_BUDGET_S
    if started_epoch is None:
        return GPU_BUDGET_S
    return max(0.0, TOTAL_S - REPORT_S - (now_epoch - started_epoch))


def planned_seconds(parts: Sequence[Part] = PARTS) -> int:
    return sum(p.expected_s for p in parts)


@dataclass
class PartResult:
    name: str
    status: str  # ok | failed | timeout | skipped
    seconds: float = 0.0
    cpu_s: float = 0.0  # CPU time of the part's processes (user + system), whatever else loads the machine
    timeout_s: float = 0.0
    note: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


Runner = Callable[[Part, float], PartResult]


def run_parts(
    parts: Sequence[Part],
    budget_s: float,
    run: Runner,
    *,
    on_gpu: bool,
    clock: Callable[[], float] = time.monotonic,
) -> list[PartResult]:
    """Run ``parts`` in order within ``budget_s``: each gets its own timeout, cut to what is left of
    the budget; a part whose prerequisite did not succeed, or for which less than ``min_s`` is left,
    is skipped with the reason. A part's failure or timeout does not stop the others."""
    deadline = clock() + budget_s
    results: list[PartResult] = []
    ok: set[str] = set()
    for part in parts:
        left = deadline - clock()
        missing = [n for n in part.needs if n not in ok]
        if missing:
            results.append(PartResult(part.name, "skipped", note=f"needs {', '.join(missing)}"))
            continue
        if left < part.min_s:
            results.append(
                PartResult(
                    part.name, "skipped", note=f"time budget: {max(0, left):.0f} s left of {budget_s:.0f} s"
                )
            )
            continue
        timeout = min(part.timeout_s if on_gpu else part.cpu_timeout_s, left)
        result = run(part, timeout)
        result.timeout_s = timeout
        if result.status == "ok":
            ok.add(part.name)
        results.append(result)
    return results


def subprocess_runner(args: argparse.Namespace, state: Path) -> Runner:
    """Each part as ``python -m benchmarks.gpu_check --run-part NAME`` in its own process group,
    killed with its children (servers) on timeout."""

    def run(part: Part, timeout: float) -> PartResult:
        out = state / "parts" / f"{part.name}.json"
        out.unlink(missing_ok=True)
        log = state / "logs" / f"{part.name}.log"
        argv = [sys.executable, "-m", "benchmarks.gpu_check", "--run-part", part.name,
                "--state", str(state), "--scale", args.scale]  # fmt: skip
        print(f"==> {part.name}: {part.what} (timeout {timeout:.0f} s)", flush=True)
        started, cpu0 = time.monotonic(), _children_cpu_s()
        with log.open("wb") as f:
            proc = subprocess.Popen(
                argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return _result(part, rc, time.monotonic() - started, timeout, out, log, cpu0)

    return run


PRELOAD = (
    "transformers", "transformers.models.glm.modeling_glm", "transformers.models.glm4v.modeling_glm4v",
    "bitsandbytes", "safetensors.torch", "autoglm_runtime.loader", "autoglm_runtime.engine",
    "autoglm_runtime.devmodels", "autoglm_runtime.vision", "autoglm_runtime.app", "benchmarks.engine_bench",
    "benchmarks.agent_bench", "benchmarks.loadgen", "benchmarks.servers", "benchmarks.gpu_parts",
)  # fmt: skip


def fork_runner(args: argparse.Namespace, state: Path) -> Runner:
    """The CPU form: parts in forked children of this process, which imported torch, transformers and
    the runtime once (a fresh interpreter per part would spend most of a small CI run importing).
    Only without CUDA: a CUDA context does not survive a fork, so the GPU form uses
    :func:`subprocess_runner`. Same timeouts, same process-group kill."""
    import importlib
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    scale = SCALES[args.scale]

    def run(part: Part, timeout: float) -> PartResult:
        out = state / "parts" / f"{part.name}.json"
        out.unlink(missing_ok=True)
        log = state / "logs" / f"{part.name}.log"
        print(f"==> {part.name}: {part.what} (timeout {timeout:.0f} s, forked)", flush=True)
        sys.stderr.flush()
        started, cpu0 = time.monotonic(), _children_cpu_s()
        pid = os.fork()
        if pid == 0:  # the part
            rc = 1
            try:
                os.setsid()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                rc = run_part(part.name, scale, state, forked=True)
            except BaseException:  # noqa: BLE001 - the child reports and exits, never returns
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        rc_: int | None = None
        while time.monotonic() - started < timeout:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc_ = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return _result(part, rc_, time.monotonic() - started, timeout, out, log, cpu0)

    return run


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _result(
    part: Part, rc: int | None, seconds: float, timeout: float, out: Path, log: Path, cpu0: float
) -> PartResult:
    data = json.loads(out.read_text()) if out.is_file() else {}
    if rc is None:
        result = PartResult(part.name, "timeout", seconds, note=f"killed after {timeout:.0f} s", data=data)
    elif rc != 0 or not data:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        result = PartResult(part.name, "failed", seconds, note=f"exit {rc}: {tail[0][:200]}", data=data)
    else:
        result = PartResult(part.name, "ok", seconds, data=data)
    result.cpu_s = round(_children_cpu_s() - cpu0, 2)
    print(
        f"<== {part.name}: {result.status} after {seconds:.0f} s ({result.cpu_s:.0f} s CPU) {result.note}",
        flush=True,
    )
    return result


# --- the report -------------------------------------------------------------------------------------
def _fmt(x: Any, unit: str = "", digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, float):
        s = f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}g}"
    else:
        s = f"{x:,}" if isinstance(x, int) else str(x)
    return f"{s}{unit}"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _status(passed: bool | None, gpu: bool) -> str:
    if passed is None:
        return "-"
    if not gpu:
        return "INFO"
    return "PASS" if passed else "MISS"


def rows(results: Sequence[PartResult], on_gpu: bool) -> list[dict[str, Any]]:
    """One row per number worth a line: what, model, mode, value, target, status, device."""
    out: list[dict[str, Any]] = []

    def row(part: str, what: str, value: str, target: str = "", passed: bool | None = None,
            device: str = "", model: str = "", mode: str = "") -> None:  # fmt: skip
        out.append({"part": part, "what": what, "model": model, "mode": mode, "value": value, "target": target,
                    "status": _status(passed, on_gpu), "passed": passed, "device": device})  # fmt: skip

    for r in results:
        d = r.data
        dev = str(d.get("device", ""))
        if r.status != "ok" and not d:
            row(r.name, "part", f"{r.status.upper()}: {r.note}".strip(": "), device=dev)
            continue
        if r.status != "ok":
            row(r.name, "part", f"{r.status.upper()}: {r.note}", device=dev)
        if r.name == "pytest-gpu":
            row(r.name, "pytest -m gpu", d.get("summary", ""), "no failures", d.get("ok"), dev)
        elif r.name.startswith("build-"):
            row(r.name, "random weights made + saved", f"{_count(d['parameters'])} params, "
                f"{_size(d['bytes_on_disk'])}, {d['build_s']:.0f} s", device=dev, model=d["shape"])  # fmt: skip
        elif r.name.startswith("load-"):
            _, kind, mode = r.name.split("-")
            if "skipped" in d:
                row(r.name, "load", d["skipped"], device=dev, model=kind, mode=mode)
                continue
            w = d["weights_ratio"]
            row(r.name, "load time", _fmt(d["load_s"], " s"), device=dev, model=kind, mode=mode)
            row(r.name, "weights / estimate", f"{_fmt(w, 'x')} ({_size(d['weights_bytes'])})",
                f"within {WEIGHTS_WITHIN:.0%}", abs(w - 1) <= WEIGHTS_WITHIN, dev, kind, mode)  # fmt: skip
            p = d.get("peak_ratio")
            row(r.name, "peak with KV pool / estimate", f"{_fmt(p, 'x')} ({_size(d['peak_bytes'])})",
                f"within {PEAK_WITHIN:.0%}", None if p is None else abs(p - 1) <= PEAK_WITHIN, dev, kind, mode)  # fmt: skip
            dec = d["decode_batch1"]
            bw = d.get("achieved_bandwidth_gbs")
            util = d.get("bandwidth_utilisation")
            row(r.name, "decode batch 1", f"{_fmt(dec['tokens_per_s'], ' tok/s')}; {_fmt(bw, ' GB/s')} = "
                f"{_fmt(util and 100 * util, '%')} of copy {_fmt(d['copy_bandwidth_gbs'], ' GB/s')}",
                device=dev, model=kind, mode=mode)  # fmt: skip
        elif r.name in ("serve-text", "serve-text-noprefix"):
            mode = d.get("mode", "")
            if "batching_x" in d:
                x = d["batching_x"]
                row(r.name, "HTTP 16 concurrent / 1", f"{_fmt(x, 'x')} ({_fmt(d['c16']['output_throughput'], ' tok/s')}"
                    f" vs {_fmt(d['c1']['output_throughput'], ' tok/s')})", f">= {BATCHING_X:g}x",
                    None if x is None else x >= BATCHING_X, dev, "text", mode)  # fmt: skip
            a = d.get("agent", {})
            row(r.name, "text agent TTFT p50, step 3+", f"{_fmt(a.get('ttft_p50_s_step3_on'), ' s')} "
                f"({a.get('errors', '?')} errors)", device=dev, model="text", mode=mode)  # fmt: skip
        elif r.name == "serve-phone":
            run = d.get("run", {})
            lat = (run.get("step_latency_s") or {}).get("p50")
            shot = f"{d['screenshot']} screenshot, " if "screenshot" in d else ""
            row(r.name, "phone step latency p50", f"{_fmt(lat, ' s')} ({shot}{d.get('image_tokens')} image tokens, "
                f"{run.get('steps_ok', 0)} steps, {run.get('error_count', '?')} errors)",
                device=dev, model="vision", mode=d.get("mode", ""))  # fmt: skip
        elif r.name == "transformers":
            g1 = d.get("generate_batch1", {})
            gb = d.get("generate_batch", {})
            row(r.name, "transformers generate batch 1", _fmt(g1.get("tokens_per_s"), " tok/s"), device=dev,
                model="text", mode=d.get("dtype", ""))  # fmt: skip
            row(r.name, "transformers generate_batch 16",
                gb.get("error") or _fmt(gb.get("tokens_per_s"), " tok/s"), device=dev, model="text",
                mode=d.get("dtype", ""))  # fmt: skip
    by = {r.name: r.data for r in results if r.status == "ok"}
    on, off = by.get("serve-text", {}).get("agent", {}), by.get("serve-text-noprefix", {}).get("agent", {})
    if on.get("ttft_p50_s_step3_on") and off.get("ttft_p50_s_step3_on"):
        x = off["ttft_p50_s_step3_on"] / on["ttft_p50_s_step3_on"]
        row("serve-text*", "prefix reuse: TTFT p50 off / on", _fmt(x, "x"), f">= {PREFIX_X:g}x", x >= PREFIX_X,
            by["serve-text"].get("device", ""), "text")  # fmt: skip
    ours = by.get("load-text-bf16", {}).get("decode_batch1", {}).get("tokens_per_s")
    hf = by.get("transformers", {}).get("generate_batch1", {}).get("tokens_per_s")
    if ours and hf:
        row("load-text-bf16 / transformers", "batch-1 decode, ours / transformers generate", _fmt(ours / hf, "x"),
            device=by["transformers"].get("device", ""), model="text")  # fmt: skip
    c16 = by.get("serve-text", {}).get("c16", {}).get("output_throughput")
    gb = by.get("transformers", {}).get("generate_batch", {}).get("tokens_per_s")
    if c16 and gb:
        row("serve-text / transformers", "16 concurrent: ours (HTTP) / generate_batch (in-process)",
            _fmt(c16 / gb, "x"), device=by["transformers"].get("device", ""), model="text")  # fmt: skip
    return out


def table(info: dict[str, Any], results: Sequence[PartResult], table_rows: Sequence[dict[str, Any]],
          elapsed_s: float, scale: Scale) -> str:  # fmt: skip
    gpu = info.get("gpu")
    v = info["versions"]
    head = [
        f"GPU check — {gpu['name']} ({gpu['memory_gib']} GiB, cc {gpu['capability']}), driver {info.get('driver') or 'unknown'}"
        if gpu else f"GPU check — no CUDA on this machine: the same parts at tiny scale on the CPU ({info['cpu_cores']} cores)",
        f"torch {v['torch']} (CUDA {v['cuda'] or 'none'}), transformers {v['transformers']}, accelerate "
        f"{v['accelerate']}, bitsandbytes {v['bitsandbytes']}, autoglm {v['autoglm']}, Python {info['python']}",
        f"scale {scale.name}; {elapsed_s:.0f} s in all ({sum(r.cpu_s for r in results):.0f} s CPU in the parts); parts: "
        + ", ".join(f"{r.name} {r.status} {r.seconds:.0f} s" for r in results),
        "",
    ]  # fmt: skip
    cols = ["status", "part", "what", "model", "mode", "value", "target", "device"]
    cells = [[str(r[c]) for c in cols] for r in table_rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(x.ljust(w) for x, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    return "\n".join(head + lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--out", type=Path, default=REPO / "build" / "gpu-check", help="results folder (JSON, logs)"
    )
    p.add_argument(
        "--scale", choices=["auto", "gpu", "tiny"], default="auto", help="auto: gpu with CUDA, else tiny"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        help=f"deadline for all parts (default {GPU_BUDGET_S} on a GPU, {CPU_BUDGET_S} on a CPU)",
    )
    p.add_argument("--parts", nargs="+", choices=PART_NAMES, help="run only these (and the builds they need)")
    p.add_argument(
        "--work", type=Path, help="where the models are built (default: a temporary folder, removed)"
    )
    p.add_argument(
        "--fork",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run parts as forks of one process that imported torch once (default: without CUDA)",
    )
    p.add_argument("--run-part", help=argparse.SUPPRESS)
    p.add_argument("--machine-json", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.machine_json:
        print(json.dumps(machine()))
        return 0
    if args.run_part:
        scale = SCALES[args.scale]
        return run_part(args.run_part, scale, args.state)

    if cuda_possible():
        # Read the machine in a child: a CUDA context in this process would hold memory on the card
        # for the whole run and count in every part's peak.
        probe = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--machine-json"], cwd=REPO,
                               capture_output=True, text=True, timeout=180, check=True)  # fmt: skip
        info = json.loads(probe.stdout.strip().splitlines()[-1])
    else:  # no NVIDIA driver: no CUDA context to fear, and the CPU form's forks want torch here anyway
        info = machine()
    on_gpu = info["gpu"] is not None
    if args.scale == "auto":
        args.scale = "gpu" if on_gpu else "tiny"
    scale = SCALES[args.scale]
    if not on_gpu:
        print(
            "No CUDA device here: running every part at tiny scale on the CPU (the numbers say cpu).",
            flush=True,
        )
    started_env = os.environ.get("GPU_CHECK_STARTED")
    budget = args.budget_s or parts_budget(on_gpu, float(started_env) if started_env else None, time.time())
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="autoglm-gpu-check-"))
    state = work
    for sub in ("parts", "logs", "models"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "machine.json").write_text(json.dumps(info))  # the parts read the card's capability
    wanted = set(args.parts or PART_NAMES)
    wanted |= {n for pt in PARTS if pt.name in wanted for n in pt.needs}  # a load needs its build
    parts = [pt for pt in PARTS if pt.name in wanted]
    started = time.monotonic()
    try:
        fork = args.fork if args.fork is not None else not on_gpu
        if fork and on_gpu:
            p.error("--fork is for the CPU form only (a CUDA context does not survive a fork)")
        runner = fork_runner(args, state) if fork else subprocess_runner(args, state)
        results = run_parts(parts, budget, runner, on_gpu=on_gpu)
    finally:
        with contextlib.suppress(OSError):
            shutil.copytree(state / "logs", args.out / "logs", dirs_exist_ok=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    table_rows = rows(results, on_gpu)
    report = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "scale": scale.name,
        "on_gpu": on_gpu,
        "budget_s": budget,
        "elapsed_s": round(elapsed, 1),
        "machine": info,
        "parts": [dataclasses.asdict(r) for r in results],
        "rows": table_rows,
    }
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = table(info, results, table_rows, elapsed, scale)
    (args.out / "gpu-check.txt").write_text(text + "\n")
    print()
    print(text)
    bad = [r.name for r in results if r.status in ("failed", "timeout")]
    if bad:
        print(f"\nparts that did not finish: {', '.join(bad)} (logs in {args.out / 'logs'})")
    return 1 if bad else 0


if __name__ == "__main__":
    code = main()
    # Everything is written; skip the interpreter's teardown of torch and transformers (seconds on
    # a small CPU, measured 9 s on the busy 2-core VM) when this process imported them (the CPU form).
    if "torch" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
