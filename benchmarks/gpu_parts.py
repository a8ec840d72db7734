"""The measurements of ``make gpu-check`` (:mod:`benchmarks.gpu_check` runs each as a part in its
own process and reports them): the sizes of each form, the models built from config, the estimator's
numbers, and one function per part. Each part returns a dict of numbers that names its device."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TEXT_CATALOG = "THUDM/glm-4-9b-chat-hf"  # GLM-4-9B in transformers' own format (GlmForCausalLM)
VISION_CATALOG = "zai-org/AutoGLM-Phone-9B"  # GLM-4.1V-9B shape: the same LM + a 0.9 B vision tower
MODES = ("bf16", "int8", "nf4")
SERVED = "bench"  # --served-model-name of the text servers (benchmarks.engine_bench sends it)
PHONE = "autoglm-phone-9b"  # what benchmarks.agent_bench sends

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
    screenshot: tuple[int, int]  # the phone step's screenshot (width, height)
    copy_bytes: int  # the device-to-device copy that measures the memory bandwidth


GPU = Scale(
    name="gpu", text_shape=TEXT_CATALOG, vision_shape=VISION_CATALOG, vocab_size=151552,
    decode_tokens=64, max_input_tokens=4096, max_new_tokens=512, max_batch_tokens=2048,
    kv_cache_tokens=16 * 4608, c1_requests=4, c16_requests=32, output_tokens=64,
    agent_sessions=8, agent_steps=4, system_tokens=1500, phone_steps=3, screenshot=(1080, 2400),
    copy_bytes=1 << 30,
)  # fmt: skip
TINY = Scale(
    name="tiny", text_shape=None, vision_shape=None, vocab_size=1024,
    decode_tokens=16, max_input_tokens=4096, max_new_tokens=64, max_batch_tokens=512,
    kv_cache_tokens=8192, c1_requests=2, c16_requests=16, output_tokens=8,
    agent_sessions=2, agent_steps=3, system_tokens=300, phone_steps=1, screenshot=(540, 1200),
    copy_bytes=16 << 20,
)  # fmt: skip
SCALES = {"gpu": GPU, "tiny": TINY}


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


def compute_dtype(state: Path) -> str:
    """The 16-bit dtype the check computes in: bf16, except on a card older than compute capability
    8.0 (T4, V100), where the runtime refuses bf16 compute and bitsandbytes' 4-bit compute there:
    fp16. Read from the machine the orchestrator wrote (no CUDA call, so a part that only starts a
    server holds no CUDA context)."""
    f = state / "machine.json"
    gpu = json.loads(f.read_text()).get("gpu") if f.is_file() else None
    if gpu and tuple(int(x) for x in str(gpu["capability"]).split(".")) < (8, 0):
        return "fp16"
    return "bf16"


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
        model=str(folder), quantization=mode, compute_dtype=compute_dtype(state), gpu_memory_percent=90,
        max_batch_size=16,
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


def part_serve_text(scale: Scale, state: Path, prefix: bool, forked: bool = False) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from benchmarks.engine_bench import SERVED as SERVED_FLAGS
    from benchmarks.engine_bench import _text_of_tokens, agent_run
    from benchmarks.loadgen import Workload, make_prompt, run_workload
    from benchmarks.servers import autoglm_spec, launched

    folder = state / "models" / "text"
    mode = _server_mode(state, "text")
    extra = [*SERVED_FLAGS, "--max-input-tokens", str(scale.max_input_tokens), "--max-new-tokens",
             str(scale.max_new_tokens), "--max-batch-tokens", str(scale.max_batch_tokens),
             "--compute-dtype", compute_dtype(state)]  # fmt: skip
    if not prefix:
        extra.append("--no-prefix-caching")
    spec = autoglm_spec("serve-text" if prefix else "serve-text-noprefix", folder, quantization=mode,
                        max_batch_size=16, extra=extra)  # fmt: skip
    spec.memory_cap_bytes = NO_MEMORY_CAP
    spec.fork = forked
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


def part_serve_phone(scale: Scale, state: Path, forked: bool = False) -> dict[str, Any]:
    from PIL import Image

    from autoglm_runtime.vision import load_image_processor
    from benchmarks.agent_bench import run_sessions
    from benchmarks.servers import autoglm_spec, launched

    folder = state / "models" / "vision"
    mode = _server_mode(state, "vision")
    processor = load_image_processor(str(folder))
    grid = processor(images=[Image.new("RGB", scale.screenshot)], return_tensors="pt")["image_grid_thw"][0]
    image_tokens = int(grid.prod()) // 4  # merge 2 x 2
    extra = ["--served-model-name", PHONE, "--max-input-tokens", "32768", "--max-new-tokens", "64",
             "--compute-dtype", compute_dtype(state)]  # fmt: skip
    spec = autoglm_spec("serve-phone", folder, quantization=mode, max_batch_size=4, extra=extra)
    spec.memory_cap_bytes = NO_MEMORY_CAP
    spec.fork = forked
    with launched([spec], state / "logs" / "servers", timeout_s=240) as (server,):
        run = asyncio.run(
            run_sessions(server.spec.base_url, "autoglm", 1, scale.phone_steps, 16, scale.screenshot)
        )
        ready = server.ready_s
    return {"device": device_name(), "mode": mode, "ready_s": ready, "image_tokens": image_tokens,
            "screenshot": "x".join(map(str, scale.screenshot)), "run": run}  # fmt: skip


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
    # bf16 as the runtime's load-text-bf16 part, so the two batch-1 rates compare like with like
    # (fp16 on a card without bf16 compute, where that part is skipped).
    half = compute_dtype(state)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[half]),
        device_map="cuda:0" if on_gpu else "cpu",
    ).eval()
    result: dict[str, Any] = {"device": device_name(), "transformers": transformers.__version__,
                              "dtype": half, "load_s": round(time.perf_counter() - started, 2)}  # fmt: skip
    ids = tokenizer(make_prompt(64, tokenizer), return_tensors="pt").to(model.device)
    ids.pop("token_type_ids", None)  # some tokenizers return them; generate refuses them
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
    """The gpu-marked tests, in this process (no fresh interpreter to import torch again); on a
    machine without CUDA they skip (the count says so). Their output goes to logs/pytest-gpu.txt."""
    import re

    import pytest

    report = state / "logs" / "pytest-gpu.txt"
    os.chdir(REPO)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with report.open("wb") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            # Only the plugins the tests use (the wheelhouse's), not whatever else the node has.
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            rc = int(pytest.main(["-m", "gpu", "-q", "-p", "no:cacheprovider", "-p", "pytest_asyncio.plugin",
                                  "-p", "pytest_timeout", "-o", "addopts=-ra", "tests/runtime/test_gpu.py"]))  # fmt: skip
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    text = report.read_text(errors="replace")
    last = (text.strip().splitlines() or [""])[-1]
    counts = {
        k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", last)
    }
    return {"device": device_name(), "exit": rc, "summary": last.strip("= "), "counts": counts,
            "ok": rc in (0, 5) and not counts.get("failed") and not counts.get("error")}  # fmt: skip


def run_part(name: str, scale: Scale, state: Path, *, forked: bool = False) -> int:
    """Child-process entry: run one part, write parts/NAME.json; exit 0 when it ran. ``forked``: this
    process is a fork of one that imported the runtime (the CPU form), and so are its servers."""
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
        data = part_serve_text(scale, state, prefix=True, forked=forked)
    elif name == "serve-text-noprefix":
        data = part_serve_text(scale, state, prefix=False, forked=forked)
    elif name == "serve-phone":
        data = part_serve_phone(scale, state, forked=forked)
    elif name == "transformers":
        data = part_transformers(scale, state)
    else:
        raise SystemExit(f"unknown part {name}")
    data["part_s"] = round(time.perf_counter() - started, 2)
    (state / "parts" / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return 0 if data.get("ok", True) else 1
