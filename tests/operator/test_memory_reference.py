"""The torch-free estimator against torch: accelerate's module sizes, real bitsandbytes layouts, a real KV cache.

These tests import torch/transformers/accelerate (the operator package does not).
"""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

from accelerate.utils import CustomDtype, compute_module_sizes  # noqa: E402

from autoglm_operator.memory import Workload, estimate, lookup_model, shape_from_config, weights_bytes  # noqa: E402
from autoglm_operator.memory.types import GIB  # noqa: E402
from tests.operator.reference_configs import GLM4_9B, SMOLLM2_135M  # noqa: E402

GLM_9B = GLM4_9B


def empty_model(model_type: str, config: dict):
    cfg = transformers.AutoConfig.for_model(model_type, **config)
    with accelerate.init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.tie_weights()
    return model


def bnb_layout_sizes(model, dtype) -> int:
    """accelerate's size with bitsandbytes' per-tensor layout: decoder Linear weights in ``dtype``,
    everything else (embeddings, lm_head, norms, biases) 16-bit."""
    linear = {
        f"{name}.weight"
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in name
    }
    special = {name: torch.bfloat16 for name, _ in model.named_parameters() if name not in linear}
    return compute_module_sizes(model, dtype=dtype, special_dtypes=special)[""]


@pytest.mark.parametrize(
    ("model_type", "config"), [("glm", GLM_9B), ("llama", SMOLLM2_135M)], ids=["glm4-9b", "smollm2-135m"]
)
def test_weights_within_3_percent_of_accelerate(model_type, config):
    model = empty_model(model_type, config)
    shape = shape_from_config({"model_type": model_type, **config})
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    reference = {
        "bf16": compute_module_sizes(model)[""],
        "int8": bnb_layout_sizes(model, torch.int8),
        "nf4": bnb_layout_sizes(model, CustomDtype.INT4),
    }
    for mode, ref in reference.items():
        ours = weights_bytes(shape, mode)
        assert abs(ours - ref) / ref < 0.03, (mode, ours / GIB, ref / GIB)


def test_glm4_9b_reference_numbers_from_testing_md():
    model = empty_model("glm", GLM_9B)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 9.40
    assert round(compute_module_sizes(model)[""] / GIB, 1) == 17.5
    assert round(bnb_layout_sizes(model, torch.int8) / GIB, 1) == 9.9
    assert 6.1 <= bnb_layout_sizes(model, CustomDtype.INT4) / GIB <= 6.6
    catalog = lookup_model("THUDM/glm-4-9b-chat")
    assert catalog is not None
    assert catalog.parameters == sum(p.numel() for p in model.parameters())


def test_kv_cache_formula_equals_a_real_dynamic_cache():
    cfg = transformers.GlmConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=100,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.GlmForCausalLM(cfg).to(torch.bfloat16).eval()
    batch, tokens = 3, 11
    with torch.no_grad():
        out = model(torch.randint(0, 100, (batch, tokens)), use_cache=True)
    cache = out.past_key_values
    measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    shape = shape_from_config({"model_type": "glm", **cfg.to_dict()})
    e = estimate(shape, "bf16", None, 0, workload=Workload(batch, tokens - 1, 1))
    assert e.kv_bytes_per_token * batch * tokens == measured
    assert e.kv_cache_bytes == e.kv_bytes_per_token * 16  # one request of 11 tokens: one 16-token block


def _quant_state_bytes(model) -> int:
    """4-bit scales live in each weight's quant_state, not in parameters: count them too."""
    total = 0
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            continue
        for t in (state.absmax, getattr(state, "code", None)):
            total += t.numel() * t.element_size() if t is not None else 0
        if state.state2 is not None:
            total += sum(t.numel() * t.element_size() for t in (state.state2.absmax, state.state2.code))
    return total


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bf16", "int8", "nf4"])
def test_real_bitsandbytes_footprint_on_cpu_within_3_percent(mode, tmp_path):
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    config = {
        "hidden_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 2048,
        "vocab_size": 8192,
        "tie_word_embeddings": False,
    }
    cfg = transformers.LlamaConfig(**config)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)
    kwargs: dict = {"dtype": torch.bfloat16}
    if mode == "int8":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
    elif mode == "nf4":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu", **kwargs)
    measured = model.get_memory_footprint() + _quant_state_bytes(model)
    ours = weights_bytes(shape_from_config({"model_type": "llama", **config}), mode)
    assert abs(ours - measured) / measured < 0.03, (mode, ours, measured)
