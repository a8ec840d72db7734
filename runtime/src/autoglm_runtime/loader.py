"""Load one causal LM as the settings ask: dtype or bitsandbytes quantization, memory budgets, warm-up.

Every failure a user can cause (missing folder, corrupt weights, a quantization the hardware cannot
run, a model too large for its budget) raises :class:`ModelLoadError` with a one-line message that
says what to do; the CLI prints it and exits non-zero without a traceback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm_runtime.memory import DeviceBudget, apply_gpu_fraction, plan_device_budget
from autoglm_runtime.settings import ComputeDtype, Quantization, RuntimeSettings

log = logging.getLogger(__name__)

# Used when a tokenizer has none, so /v1/chat/completions still works (ChatML, which most
# instruction-tuned models without their own template tolerate).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WARMUP_PROMPT = "Hello"


class ModelLoadError(Exception):
    """The model cannot be served; the message is for the operator of the pod, one line."""


class ModelNotFoundError(ModelLoadError):
    pass


class CorruptWeightsError(ModelLoadError):
    pass


class UnsupportedQuantizationError(ModelLoadError):
    pass


@dataclass
class LoadedModel:
    model: Any  # PreTrainedModel
    tokenizer: Any  # PreTrainedTokenizerBase
    name: str
    quantization: Quantization
    device: str  # where inputs go: "cpu" or "cuda:0"
    load_seconds: float
    memory_bytes: int  # model.get_memory_footprint()
    plan: DeviceBudget
    vision: Any = None  # a vision.VisionProcessor for image-text-to-text models, else None


def served_name(settings: RuntimeSettings) -> str:
    """The model name clients send: ``served_model_name`` or the folder/repo name's last part."""
    if settings.served_model_name:
        return settings.served_model_name
    source = settings.model.removeprefix("hf://").rstrip("/")
    return source.rsplit("/", 1)[-1] or source


def resolve_source(settings: RuntimeSettings) -> str:
    """A local folder path, or a hub id when the source is ``hf://org/name`` / ``org/name``."""
    source = settings.model
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") != 1
    if looks_local:
        raise ModelNotFoundError(
            f"model folder {source} does not exist (set --model to a folder or hf://org/name)"
        )
    return source


def check_weights(folder: Path) -> None:
    """Open every safetensors file's header so a truncated download fails here, clearly."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files and not any(folder.glob("*.bin")) and not any(folder.glob("*.gguf")):
        raise ModelNotFoundError(f"no weights (*.safetensors) in model folder {folder}")
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {folder} has no config.json")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise CorruptWeightsError(
                f"corrupt or truncated weights file {file}: {exc} (delete it and fetch the model again)"
            ) from exc


def _torch_dtype(name: ComputeDtype | Quantization) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[str(name)]


def check_hardware(settings: RuntimeSettings, plan: DeviceBudget) -> None:
    """Refuse combinations the hardware cannot run, before spending minutes loading."""
    q = settings.quantization
    old_gpus = [g for g in plan.gpus if g.compute_capability < (8, 0)]
    if q is Quantization.BF16 and old_gpus:
        g = old_gpus[0]
        raise UnsupportedQuantizationError(
            f"quantization bf16 needs GPU compute capability >= 8.0; cuda:{g.index} {g.name} has "
            f"{g.compute_capability[0]}.{g.compute_capability[1]} (use fp16, int8 or nf4)"
        )
    if q.is_bitsandbytes:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise UnsupportedQuantizationError(
                f"quantization {q} needs the bitsandbytes package, which is not installed"
            ) from exc
        if settings.compute_dtype is ComputeDtype.BF16 and old_gpus:
            g = old_gpus[0]
            raise UnsupportedQuantizationError(
                f"compute dtype bf16 needs GPU compute capability >= 8.0; cuda:{g.index} {g.name} has "
                f"{g.compute_capability[0]}.{g.compute_capability[1]} (use --compute-dtype fp16)"
            )


# Module names of vision towers and projectors: bitsandbytes leaves them (and lm_head) 16-bit.
# Quantizing a ViT costs the precision a phone agent's tap coordinates depend on, for little memory.
VISION_MODULES = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "mm_projector")


def is_vision_config(config: Any) -> bool:
    """Whether ``config`` describes a model transformers maps to image-text-to-text."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and hasattr(
        config, "vision_config"
    )


def hub_kwargs(settings: RuntimeSettings) -> dict[str, Any]:
    """Where the files come from: revision, cache folder, remote code (every ``from_pretrained``)."""
    kwargs: dict[str, Any] = {"revision": settings.revision, "trust_remote_code": settings.trust_remote_code}
    if settings.cache_dir is not None:
        kwargs["cache_dir"] = str(settings.cache_dir)
    return kwargs


def from_pretrained_kwargs(
    settings: RuntimeSettings, plan: DeviceBudget, *, vision: bool = False
) -> dict[str, Any]:
    """The dtype/quantization/placement arguments of ``from_pretrained`` for these settings."""
    import torch

    q = settings.quantization
    kwargs = hub_kwargs(settings)
    if plan.gpus:
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = plan.max_memory
    else:
        kwargs["device_map"] = {"": "cpu"}
    if q is Quantization.NONE:
        # The checkpoint's dtype on a GPU; fp32 on a CPU, where half precision is slow or unsupported.
        kwargs["dtype"] = "auto" if plan.gpus else torch.float32
    elif q in (Quantization.FP16, Quantization.BF16):
        kwargs["dtype"] = _torch_dtype(q)
    else:
        from transformers import BitsAndBytesConfig

        compute = _torch_dtype(settings.compute_dtype)
        # Only the language model's Linear layers are quantized (the skip list applies to 4-bit too).
        # transformers matches these from the start of a module's full name (as regexes) or as a
        # suffix: "(?:.*\\.)?visual" catches model.visual.* at any depth.
        skip = ["lm_head", *(rf"(?:.*\.)?{m}" for m in VISION_MODULES)] if vision else None
        if q is Quantization.INT8:
            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=str(q),
                bnb_4bit_use_double_quant=settings.double_quant,
                bnb_4bit_compute_dtype=compute,
                llm_int8_skip_modules=skip,
            )
        kwargs["quantization_config"] = config
        # Embeddings, norms and lm_head stay unquantized, in the compute dtype.
        kwargs["dtype"] = compute
    return kwargs


def _meta_tensors(model: Any) -> list[str]:
    names = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    names += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    return names


def _prepare_tokenizer(tokenizer: Any, model: Any) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not getattr(tokenizer, "chat_template", None):
        log.warning("Tokenizer has no chat template; using a ChatML fallback for /v1/chat/completions")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def input_device(model: Any) -> str:
    import torch

    try:
        return str(model.get_input_embeddings().weight.device)
    except AttributeError:
        return "cuda:0" if torch.cuda.is_available() else "cpu"


def load_model(settings: RuntimeSettings, *, plan: DeviceBudget | None = None) -> LoadedModel:
    """Load, check and warm up the model; raises :class:`ModelLoadError` on anything a user can fix."""
    # bitsandbytes logs on import (a missing optional module) and on every int8 forward pass.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars garble JSON logs
    started = time.perf_counter()
    plan = plan or plan_device_budget(settings.host_memory_percent, settings.gpu_memory_percent)
    log.info("Memory budgets: %s", plan.describe())
    source = resolve_source(settings)
    if Path(source).is_dir():
        check_weights(Path(source))
    check_hardware(settings, plan)
    apply_gpu_fraction(plan)
    hub = hub_kwargs(settings)
    vision = None
    try:
        config = AutoConfig.from_pretrained(source, **hub)
        has_vision = is_vision_config(config)
        kwargs = from_pretrained_kwargs(settings, plan, vision=has_vision)
        log.info(
            "Loading %s (%s, quantization %s)",
            source,
            "image-text-to-text" if has_vision else "causal LM",
            settings.quantization,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        if has_vision:
            from autoglm_runtime.vision import VisionProcessor, load_image_processor

            model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
            visual = getattr(model, "visual", None) or getattr(getattr(model, "model", None), "visual", None)
            vision = VisionProcessor(
                load_image_processor(source, **{k: v for k, v in hub.items() if k != "trust_remote_code"}),
                model.config.image_token_id,
                settings.max_image_pixels,
                dtype=getattr(visual, "dtype", None),
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load model {settings.model}: {first_line}") from exc
    model.eval()
    meta = _meta_tensors(model)
    if meta:
        raise ModelLoadError(
            f"{len(meta)} weights of {settings.model} did not fit the memory budget (first: {meta[0]}); "
            "raise --gpu-memory-percent/--host-memory-percent, add GPUs, or choose a smaller --quantization"
        )
    _prepare_tokenizer(tokenizer, model)
    device = input_device(model)
    if settings.warmup:
        warm_up(model, tokenizer, device, vision)
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=served_name(settings),
        quantization=settings.quantization,
        device=device,
        load_seconds=time.perf_counter() - started,
        memory_bytes=int(model.get_memory_footprint()),
        plan=plan,
        vision=vision,
    )
    log.info(
        "Loaded %s in %.1f s: %.1f MiB of weights on %s",
        loaded.name,
        loaded.load_seconds,
        loaded.memory_bytes / 2**20,
        device,
    )
    return loaded


def warm_up(model: Any, tokenizer: Any, device: str, vision: Any = None) -> None:
    """One short generation, so the first request does not pay for lazy initialisation; with a
    vision model, one image request through the vision tower too."""
    import torch

    inputs = tokenizer(WARMUP_PROMPT, return_tensors="pt").to(device)
    # Some tokenizers return token_type_ids, which GLM's (and most causal LMs') generate refuses.
    inputs.pop("token_type_ids", None)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if vision is None:
        return
    from PIL import Image

    image = Image.new("RGB", (112, 112), (128, 128, 128))
    mm = vision.prepare([image], ["warm-up"])
    with torch.inference_mode():
        model.model.get_image_features(mm.pixel_values.to(device), mm.image_grid_thw.to(device))
