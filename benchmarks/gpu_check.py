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
5. ``serve-phone`` — the phone agent's step: one 1080x2400 screenshot (3,354 image tokens) + history;
6. ``transformers`` — side by side: transformers' own ``generate`` at batch 1 and its
   continuous-batching ``generate_batch`` with 16 prompts, on the same text model.

Without CUDA the same parts run at tiny scale on the CPU (CI runs that form, so the code cannot
rot); every number in the JSON says which device produced it. The table is printed last.

    python -m benchmarks.gpu_check --out build/gpu-check [--scale auto|gpu|tiny] [--parts ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
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

REPO = Path(__file__).resolve().parent.parent
TEXT_CATALOG = "THUDM/glm-4-9b-chat-hf"  # GLM-4-9B in transformers' own format (GlmForCausalLM)
VISION_CATALOG = "zai-org/AutoGLM-Phone-9B"  # GLM-4.1V-9B shape: the same LM + a 0.9 B vision tower
MODES = ("bf16", "int8", "nf4")
SERVED = "bench"  # --served-model-name of the text servers (benchmarks.engine_bench sends it)
PHONE = "autoglm-phone-9b"  # what benchmarks.agent_bench sends

# Targets (docs/benchmarks.md, "On a GPU").
WEIGHTS_WITHIN = 0.05
PEAK_WITHIN = 0.10
BATCHING_X = 6.0
PREFIX_X = 3.0
# The servers run without benchmarks.servers' address-space cap: CUDA reserves far more virtual memory
# than a process uses, and a 9B model's safetensors are mapped whole.
NO_MEMORY_CAP = -1  # resource.RLIM_INFINITY


# --- scales -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Sizes of one form of the check: ``gpu`` (the 9B shapes) or ``tiny`` (the CPU form for CI)."""

    name: str
    text_shape: str | None  # catalog name whose config sizes the text model; None = devmodels' tiny one
    vision_shape: str | None
    vocab_size: int  # the tokenizer is padded to the model's vocabulary, so every id decodes to text
    decode_tokens: int  # batch-1 decode run
    max_input_tokens: int
    max_new_tokens: int
    max_batch_tokens: int  # the step budget (the engine's GPU default is 2048, CPU 512)
    kv_cache_tokens: int  # the pool the engine and the estimator both plan for
    c1_requests: int
    c16_requests: int
    output_tokens: int
    agent_sessions: int
    agent_steps: int
    system_tokens: int
    phone_steps: int
    copy_bytes: int  # the device-to-device copy that measures the memory bandwidth


GPU = Scale(
    name="gpu", text_shape=TEXT_CATALOG, vision_shape=VISION_CATALOG, vocab_size=151552,
    decode_tokens=64, max_input_tokens=4096, max_new_tokens=512, max_batch_tokens=2048,
    kv_cache_tokens=16 * 4608, c1_requests=4, c16_requests=32, output_tokens=64,
    agent_sessions=8, agent_steps=4, system_tokens=1500, phone_steps=3, copy_bytes=1 << 30,
)  # fmt: skip
TINY = Scale(
    name="tiny", text_shape=None, vision_shape=None, vocab_size=1024,
    decode_tokens=16, max_input_tokens=4096, max_new_tokens=64, max_batch_tokens=512,
    kv_cache_tokens=8192, c1_requests=2, c16_requests=16, output_tokens=8,
    agent_sessions=2, agent_steps=3, system_tokens=300, phone_steps=1, copy_bytes=64 << 20,
)  # fmt: skip
SCALES = {"gpu": GPU, "tiny": TINY}


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
        started = time.monotonic()
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
        return _result(part, rc, time.monotonic() - started, timeout, out, log)

    return run


PRELOAD = (
    "transformers", "transformers.models.glm.modeling_glm", "transformers.models.glm4v.modeling_glm4v",
    "bitsandbytes", "safetensors.torch", "autoglm_runtime.loader", "autoglm_runtime.engine",
    "autoglm_runtime.devmodels", "autoglm_runtime.vision", "autoglm_runtime.app", "benchmarks.engine_bench",
    "benchmarks.agent_bench", "benchmarks.loadgen", "benchmarks.servers",
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
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the part
            rc = 1
            try:
                os.setsid()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                rc = run_part(part.name, scale, state)
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
        return _result(part, rc_, time.monotonic() - started, timeout, out, log)

    return run


def _result(part: Part, rc: int | None, seconds: float, timeout: float, out: Path, log: Path) -> PartResult:
    data = json.loads(out.read_text()) if out.is_file() else {}
    if rc is None:
        result = PartResult(part.name, "timeout", seconds, note=f"killed after {timeout:.0f} s", data=data)
    elif rc != 0 or not data:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        result = PartResult(part.name, "failed", seconds, note=f"exit {rc}: {tail[0][:200]}", data=data)
    else:
        result = PartResult(part.name, "ok", seconds, data=data)
    print(f"<== {part.name}: {result.status} after {seconds:.0f} s {result.note}", flush=True)
    return result


# --- the machine ------------------------------------------------------------------------------------
def _dist_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Card, driver and versions (the table's header)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_cores": os.cpu_count(),
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            **{d: _dist_version(d) for d in ("transformers", "accelerate", "bitsandbytes", "autoglm")},
        },
        "gpu": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": torch.cuda.get_device_name(0),
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "count": torch.cuda.device_count(),
        }
        smi = shutil.which("nvidia-smi")
        if smi:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20, check=False,
                )  # fmt: skip
                info["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    return info


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"


# --- models -----------------------------------------------------------------------------------------
def pad_tokenizer(folder: Path, vocab_size: int) -> int:
    """Give the saved tokenizer ``vocab_size`` ids: the model's random weights emit any id of its
    vocabulary, and an id the tokenizer cannot decode would stream no text. The new entries are
    words of byte-level characters; no merge reaches them, so prompts tokenize as before."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    taken = set(vocab) | {t["content"] for t in data.get("added_tokens", [])}
    size = max([*vocab.values(), *(t["id"] for t in data.get("added_tokens", []))]) + 1
    letters = "abcdefghijklmnopqrstuvwxyz"
    n = 0
    while size < vocab_size:
        word, k = "", n
        while True:
            word = letters[k % 26] + word
            k //= 26
            if not k:
                break
        n += 1
        token = "\u0120" + word  # "Ġ" = a space in byte-level BPE
        if token in taken:
            continue
        vocab[token] = size
        size += 1
    path.write_text(json.dumps(data, ensure_ascii=False))
    return size


def resize_config(config: Any, kind: str, shape: str | None, vocab: int) -> Any:
    """``config`` (devmodels' tiny one) with the catalog model ``shape``'s sizes (None: kept tiny)."""
    text = config.text_config if kind == "vision" else config
    if shape is not None:
        from autoglm_operator.memory.catalog import catalog_config

        found = catalog_config(shape)
        assert found is not None, shape
        src = dict(found[1])
        lm = src.get("text_config", src)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "attention_bias", "max_position_embeddings"):  # fmt: skip
            if key in lm:
                setattr(text, key, lm[key])
        text.head_dim = lm.get("head_dim") or lm["hidden_size"] // lm["num_attention_heads"]
        if kind == "vision":
            # GLM-4.1V: half the head is rotary, its 64 dims split 8/12/12 (temporal, height, width).
            rope = dict(getattr(text, "rope_parameters", None) or {})
            rope.update(mrope_section=[8, 12, 12], partial_rotary_factor=0.5)
            text.rope_parameters = rope
            for key, value in src["vision_config"].items():
                if key != "model_type":
                    setattr(config.vision_config, key, value)
    text.vocab_size = vocab
    return config


def build_model(kind: str, scale: Scale, folder: Path) -> dict[str, Any]:
    """devmodels' tiny GLM / GLM-4V (tokenizer, image processor, config), resized to the catalog's
    shape on the GPU scale, then random weights made on the device in bf16 and saved."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from autoglm_runtime.devmodels import build_tiny_glm, build_tiny_glm4v

    started = time.perf_counter()
    (build_tiny_glm if kind == "text" else build_tiny_glm4v)(folder)
    vocab = pad_tokenizer(folder, scale.vocab_size)
    shape = scale.text_shape if kind == "text" else scale.vision_shape
    config = resize_config(AutoConfig.from_pretrained(folder), kind, shape, vocab)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        with torch.device("meta"):
            probe = (AutoModelForCausalLM if kind == "text" else AutoModelForImageTextToText).from_config(
                config
            )
        need = 2 * sum(p.numel() for p in probe.parameters())
        if need > 0.9 * torch.cuda.mem_get_info()[0]:
            device = "cpu"  # a card smaller than the bf16 weights: slower to make, same files
    for old in [*folder.glob("*.safetensors"), *folder.glob("*.safetensors.index.json")]:
        old.unlink()  # the tiny build's weights: the new model's shards replace them
    auto = AutoModelForCausalLM if kind == "text" else AutoModelForImageTextToText
    made = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = auto.from_config(config, dtype=torch.bfloat16)
    if device == "cuda":
        torch.cuda.synchronize()
    init_s = time.perf_counter() - made
    params = sum(p.numel() for p in model.parameters())
    saved = time.perf_counter()
    model.save_pretrained(folder)
    save_s = time.perf_counter() - saved
    del model
    return {
        "kind": kind,
        "made_on": device,
        "shape": shape or "devmodels tiny",
        "parameters": params,
        "vocab_size": vocab,
        "folder": str(folder),
        "init_s": round(init_s, 2),
        "save_s": round(save_s, 2),
        "build_s": round(time.perf_counter() - started, 2),
        "bytes_on_disk": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
    }


# --- the estimator ------------------------------------------------------------------------------------
def run_estimate(
    kind: str, scale: Scale, folder: Path, gpu: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Per mode, what ``autoglm-operator estimate`` computes (``autoglm_operator.memory.estimate``,
    called here in-process: the CLI's spec validation needs the operator's CEL library, which the
    wheelhouse leaves out) for this card and the engine settings the parts use. The model's shape:
    the catalog entry it was built from on the GPU scale, its config.json on the tiny one."""
    from autoglm_operator.memory import GIB, GpuInfo, Workload, estimate, lookup_model, shape_from_config

    name = scale.text_shape if kind == "text" else scale.vision_shape
    if name is not None:
        shape = lookup_model(name)
        assert shape is not None, name
    else:
        shape = shape_from_config(json.loads((folder / "config.json").read_text()), f"tiny-{kind}")
    card = None
    if gpu is not None:
        major, minor = (int(x) for x in gpu["capability"].split("."))
        card = GpuInfo(name="this card", memory_bytes=gpu["memory_bytes"], compute_capability=(major, minor))
    workload = Workload(
        max_batch_size=16, max_input_tokens=scale.max_input_tokens, max_new_tokens=scale.max_new_tokens,
        max_batch_tokens=scale.max_batch_tokens, kv_cache_tokens=scale.kv_cache_tokens,
    )  # fmt: skip
    table = {}
    for mode in MODES:
        e = estimate(shape, mode, card, 1 if card else 0, workload=workload, gpu_memory_percent=90,
                     headroom_percent=10)  # fmt: skip
        table[mode] = {
            **dataclasses.asdict(e),
            "kv_pool_bytes": e.kv_pool_bytes,
            "total_bytes": e.total_bytes,
            "fits": e.fits,
            "shape": f"{shape.name} ({shape.source}), {shape.parameters / 1e9:.3f} B parameters",
            "total_gib": round(e.total_bytes / GIB, 2),
        }
    return table


def gpu_spec_here() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"}


# --- measurements -------------------------------------------------------------------------------------
def copy_bandwidth(device: str, nbytes: int, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), the bandwidth a decode step can hope for."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync()
    seconds = time.perf_counter() - started
    del src, dst
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # else the copy's 2 x nbytes stay reserved and count in the peak
    return 2 * nbytes * repeats / seconds


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _decode_batch1(engine: Any, prompt: str, tokens: int) -> dict[str, Any]:
    from autoglm_runtime.engine import SamplingParams

    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0)
    await (await engine.submit("warm up", SamplingParams(max_tokens=2, temperature=0))).collect()
    handle = await engine.submit(prompt, params)
    times: list[float] = []
    async for _ in handle:
        times.append(time.perf_counter())
    n = handle.completion_tokens
    tpot = (times[-1] - times[0]) / max(1, len(times) - 1) if len(times) > 1 else float("nan")
    return {"tokens": n, "chunks": len(times), "tpot_s": tpot, "tokens_per_s": 1 / tpot if tpot else None}


async def _peak_workload(engine: Any, prompt: str, long_prompt: str, tokens: int) -> dict[str, Any]:
    from autoglm_runtime.engine import SamplingParams

    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0)
    streams = [await engine.submit(f"{prompt} {i}", params) for i in range(16)]
    await asyncio.sleep(0.05)
    long = await engine.submit(long_prompt, SamplingParams(max_tokens=1, temperature=0))
    await asyncio.gather(*(h.collect() for h in [*streams, long]))
    return {"streams": 16, "long_prompt_tokens": long.prompt_tokens}


def part_load(kind: str, mode: str, scale: Scale, state: Path) -> dict[str, Any]:
    """Load with the runtime's loader; weights vs the estimator; batch-1 decode and bandwidth;
    the engine's pool under 16 streams and a full-budget prompt: peak vs the estimator's total."""
    import torch

    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner
    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings
    from benchmarks.loadgen import make_prompt

    folder = state / "models" / kind
    on_gpu = torch.cuda.is_available()
    estimate = run_estimate(kind, scale, folder, gpu_spec_here())[mode]
    if on_gpu and not estimate["fits"]:
        return {
            "skipped": f"{mode} does not fit this card by the estimator ({estimate['note'] or 'total > usable'})"
        }
    settings = RuntimeSettings(
        model=str(folder), quantization=mode, gpu_memory_percent=90, max_batch_size=16,
        max_batch_tokens=scale.max_batch_tokens, kv_cache_tokens=scale.kv_cache_tokens,
        max_input_tokens=scale.max_input_tokens, max_new_tokens=scale.max_new_tokens,
    )  # fmt: skip
    rss0 = _status_kib("VmRSS") * 1024
    loaded = load_model(settings)
    device = loaded.device
    allocated = torch.cuda.memory_allocated() if on_gpu else None
    weights = loaded.memory_bytes
    result: dict[str, Any] = {
        "device": device_name(),
        "mode": mode,
        "load_s": round(loaded.load_seconds, 2),
        "weights_bytes": weights,
        "cuda_allocated_after_load": allocated,
        "estimate_weights_bytes": estimate["weights_bytes"],
        "weights_ratio": weights / estimate["weights_bytes"],
    }
    copy = copy_bandwidth(device if on_gpu else "cpu", scale.copy_bytes)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    rss_loaded = _status_kib("VmRSS") * 1024
    engine = Engine(EngineConfig.from_settings(settings))
    engine.start(ModelRunner(loaded.model, loaded.tokenizer, loaded.device, vision=loaded.vision), SERVED)
    try:
        prompt = make_prompt(32, loaded.tokenizer)
        decode = asyncio.run(_decode_batch1(engine, prompt, scale.decode_tokens))
        long_prompt = make_prompt(scale.max_batch_tokens + 64, loaded.tokenizer)
        peak_run = asyncio.run(_peak_workload(engine, prompt, long_prompt, scale.output_tokens))
        pool = engine.pool_description
    finally:
        engine.stop()
    if on_gpu:
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        outside = (total - free) - torch.cuda.memory_reserved()  # CUDA context, cuBLAS, other processes
        peak = outside + torch.cuda.max_memory_reserved()
        predicted = (
            estimate["weights_bytes"] + estimate["context_bytes"] + estimate["kv_pool_bytes"]
            + estimate["activation_bytes"] + _fragmentation(estimate)
        )  # fmt: skip
        what = "peak GPU memory of the process (context + allocator peak) vs weights + context + pool + step + fragmentation"
    else:
        peak = (_status_kib("VmHWM") * 1024) - rss_loaded
        pool_bytes = int(engine.runner.kv_bytes_per_token()) * scale.kv_cache_tokens
        predicted = pool_bytes + estimate["activation_bytes"] + _fragmentation(estimate, pool_bytes)
        what = "peak RSS above the loaded model vs pool + step + fragmentation (CPU: fp32 math kernels, INFO)"
    tpot = decode["tpot_s"]
    result.update(
        decode_batch1=decode,
        copy_bandwidth_gbs=copy / 1e9,
        achieved_bandwidth_gbs=(weights / tpot / 1e9) if tpot == tpot and tpot else None,
        pool=pool,
        peak_run=peak_run,
        peak_bytes=peak,
        predicted_peak_bytes=predicted,
        peak_ratio=peak / predicted if predicted else None,
        peak_what=what,
        rss_before_load=rss0,
        estimate=estimate,
    )
    if result["achieved_bandwidth_gbs"]:
        result["bandwidth_utilisation"] = result["achieved_bandwidth_gbs"] / result["copy_bandwidth_gbs"]
    return result


def _fragmentation(estimate: dict[str, Any], pool_bytes: int | None = None) -> int:
    from autoglm_runtime import kvplan

    pool = estimate["kv_pool_bytes"] if pool_bytes is None else pool_bytes
    return kvplan.fragmentation_bytes(pool + estimate["activation_bytes"])


def _server_mode(state: Path, kind: str) -> str:
    """The least lossy mode whose load part succeeded (bf16 unless it did not fit)."""
    for mode in MODES:
        f = state / "parts" / f"load-{kind}-{mode}.json"
        if f.is_file() and "skipped" not in json.loads(f.read_text()):
            return mode
    return "nf4"


def part_serve_text(scale: Scale, state: Path, prefix: bool) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from benchmarks.engine_bench import SERVED as SERVED_FLAGS
    from benchmarks.engine_bench import _text_of_tokens, agent_run
    from benchmarks.loadgen import Workload, make_prompt, run_workload
    from benchmarks.servers import autoglm_spec, launched

    folder = state / "models" / "text"
    mode = _server_mode(state, "text")
    extra = [*SERVED_FLAGS, "--max-input-tokens", str(scale.max_input_tokens), "--max-new-tokens",
             str(scale.max_new_tokens), "--max-batch-tokens", str(scale.max_batch_tokens)]  # fmt: skip
    if not prefix:
        extra.append("--no-prefix-caching")
    spec = autoglm_spec("serve-text" if prefix else "serve-text-noprefix", folder, quantization=mode,
                        max_batch_size=16, extra=extra)  # fmt: skip
    spec.memory_cap_bytes = NO_MEMORY_CAP
    tokenizer = AutoTokenizer.from_pretrained(folder)
    system = _text_of_tokens(tokenizer, scale.system_tokens)
    result: dict[str, Any] = {"device": device_name(), "mode": mode, "prefix_caching": prefix}
    with launched([spec], state / "logs" / "servers", timeout_s=240) as (server,):
        result["ready_s"] = server.ready_s
        if prefix:
            prompt = make_prompt(64, tokenizer)
            runs = {}
            for conc, n in ((1, scale.c1_requests), (16, scale.c16_requests)):
                wl = Workload(prompt=prompt, output_tokens=scale.output_tokens, num_requests=n,
                              concurrency=conc, model=SERVED, warmup_requests=1)  # fmt: skip
                runs[conc] = asyncio.run(run_workload(server.spec.base_url, wl))
            result["c1"], result["c16"] = runs[1], runs[16]
            c1 = runs[1]["output_throughput"]
            result["batching_x"] = runs[16]["output_throughput"] / c1 if c1 else None
        result["agent"] = asyncio.run(
            agent_run(server.spec.base_url, "autoglm", system, scale.agent_sessions, scale.agent_steps,
                      scale.output_tokens)
        )  # fmt: skip
    return result


def part_serve_phone(scale: Scale, state: Path) -> dict[str, Any]:
    from PIL import Image

    from autoglm_runtime.vision import load_image_processor
    from benchmarks.agent_bench import run_sessions
    from benchmarks.servers import autoglm_spec, launched

    folder = state / "models" / "vision"
    mode = _server_mode(state, "vision")
    processor = load_image_processor(str(folder))
    grid = processor(images=[Image.new("RGB", (1080, 2400))], return_tensors="pt")["image_grid_thw"][0]
    image_tokens = int(grid.prod()) // 4  # merge 2 x 2
    extra = ["--served-model-name", PHONE, "--max-input-tokens", "32768", "--max-new-tokens", "64"]
    spec = autoglm_spec("serve-phone", folder, quantization=mode, max_batch_size=4, extra=extra)
    spec.memory_cap_bytes = NO_MEMORY_CAP
    with launched([spec], state / "logs" / "servers", timeout_s=240) as (server,):
        run = asyncio.run(run_sessions(server.spec.base_url, "autoglm", 1, scale.phone_steps, 16))
        ready = server.ready_s
    return {"device": device_name(), "mode": mode, "ready_s": ready, "image_tokens": image_tokens, "run": run}


def part_transformers(scale: Scale, state: Path) -> dict[str, Any]:
    """transformers alone on the same model: ``generate`` at batch 1, ``generate_batch`` with 16."""
    import inspect

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from benchmarks.loadgen import make_prompt

    folder = state / "models" / "text"
    on_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    started = time.perf_counter()
    # bf16 as the runtime's load-text-bf16 part, so the two batch-1 rates compare like with like.
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, device_map="cuda:0" if on_gpu else "cpu"
    ).eval()
    result: dict[str, Any] = {"device": device_name(), "transformers": transformers.__version__,
                              "dtype": "bf16", "load_s": round(time.perf_counter() - started, 2)}  # fmt: skip
    ids = tokenizer(make_prompt(64, tokenizer), return_tensors="pt").to(model.device)
    n = scale.output_tokens
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    with torch.inference_mode():
        model.generate(**ids, max_new_tokens=2, do_sample=False)
        sync()
        t0 = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync()
    seconds = time.perf_counter() - t0
    made = out.shape[-1] - ids["input_ids"].shape[-1]
    result["generate_batch1"] = {"tokens": made, "seconds": round(seconds, 3), "tokens_per_s": made / seconds}
    if not hasattr(model, "generate_batch"):
        result["generate_batch"] = {"error": f"transformers {transformers.__version__} has no generate_batch"}
        return result
    prompts = [tokenizer(make_prompt(64, tokenizer) + f" {i}")["input_ids"] for i in range(16)]
    config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              eos_token_id=None, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    kwargs: dict[str, Any] = {}
    sizes = {"num_blocks": 256, "max_batch_tokens": 512} if not on_gpu else {}
    if "continuous_batching_config" in inspect.signature(model.generate_batch).parameters:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        fields = inspect.signature(ContinuousBatchingConfig).parameters
        cb = {k: v for k, v in {**sizes, "auto_switch_to_flash": False}.items() if k in fields}
        kwargs["continuous_batching_config"] = ContinuousBatchingConfig(**cb)
    else:
        for k, v in {**sizes, "block_size": 32}.items():
            setattr(config, k, v)
    try:
        with torch.inference_mode():
            model.generate_batch(inputs=prompts[:2], generation_config=config, **kwargs)  # warm-up
            sync()
            t0 = time.perf_counter()
            outputs = model.generate_batch(inputs=prompts, generation_config=config, **kwargs)
            sync()
        seconds = time.perf_counter() - t0
        tokens = sum(len(o.generated_tokens) for o in outputs.values())
        result["generate_batch"] = {"requests": len(prompts), "tokens": tokens, "seconds": round(seconds, 3),
                                    "tokens_per_s": tokens / seconds}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the peer's failure is a finding, not the check's
        result["generate_batch"] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
    return result


def part_pytest(state: Path) -> dict[str, Any]:
    """The gpu-marked tests; on a machine without CUDA they skip (the count says so)."""
    import re

    report = state / "logs" / "pytest-gpu.txt"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
         "tests/runtime/test_gpu.py"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    report.write_text(out.stdout + out.stderr)
    last = (out.stdout.strip().splitlines() or [""])[-1]
    counts = {
        k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", last)
    }
    return {"device": device_name(), "exit": out.returncode, "summary": last.strip("= "), "counts": counts,
            "ok": out.returncode in (0, 5) and not counts.get("failed") and not counts.get("error")}  # fmt: skip


def run_part(name: str, scale: Scale, state: Path) -> int:
    """Child-process entry: run one part, write parts/NAME.json; exit 0 when it ran."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    data: dict[str, Any]
    if name == "pytest-gpu":
        data = part_pytest(state)
    elif name.startswith("build-"):
        kind = name.removeprefix("build-")
        folder = state / "models" / kind
        shutil.rmtree(folder, ignore_errors=True)
        data = {"device": device_name(), **build_model(kind, scale, folder)}
    elif name.startswith("load-"):
        _, kind, mode = name.split("-")
        data = part_load(kind, mode, scale, state)
    elif name == "serve-text":
        data = part_serve_text(scale, state, prefix=True)
    elif name == "serve-text-noprefix":
        data = part_serve_text(scale, state, prefix=False)
    elif name == "serve-phone":
        data = part_serve_phone(scale, state)
    elif name == "transformers":
        data = part_transformers(scale, state)
    else:
        raise SystemExit(f"unknown part {name}")
    data["part_s"] = round(time.perf_counter() - started, 2)
    (state / "parts" / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return 0 if data.get("ok", True) else 1


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
            row(r.name, "phone step latency p50", f"{_fmt(lat, ' s')} ({d.get('image_tokens')} image tokens, "
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
        f"scale {scale.name}; {elapsed_s:.0f} s in all; parts: "
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

    # Read the machine in a child: a CUDA context in this process would hold memory on the card for
    # the whole run and count in every part's peak.
    probe = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--machine-json"], cwd=REPO,
                           capture_output=True, text=True, timeout=180, check=True)  # fmt: skip
    info = json.loads(probe.stdout.strip().splitlines()[-1])
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
    sys.exit(main())
