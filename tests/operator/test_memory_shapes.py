"""Model shapes from config.json dicts and the built-in catalog (torch-free, fast)."""

from __future__ import annotations

import pytest

from autoglm_operator.memory import MemoryFitError, lookup_model, repo_id, shape_from_config
from autoglm_operator.memory.catalog import catalog_config
from tests.operator.reference_configs import GLM4_9B

GLM_HF = {"model_type": "glm", **GLM4_9B}


def test_glm4_9b_chat_from_catalog_has_9_40b_parameters_and_gqa_kv_shape():
    s = lookup_model("hf://THUDM/glm-4-9b-chat")
    assert s is not None
    assert s.parameters == 9_399_951_360
    assert (s.num_layers, s.num_kv_heads, s.head_dim, s.hidden_size, s.vocab_size) == (
        40,
        2,
        128,
        4096,
        151552,
    )
    assert not s.tie_word_embeddings
    assert s.kv_bytes_per_token() == 2 * 40 * 2 * 128 * 2  # 40 KiB per token in bf16


@pytest.mark.parametrize(
    "source",
    [
        "hf://THUDM/glm-4-9b-chat",
        "THUDM/glm-4-9b-chat",
        "hf://zai-org/GLM-4-9B-CHAT",
        "https://mirror.example.com/THUDM/glm-4-9b-chat",
        "https://mirror.example.com/hf/zai-org/glm-4-9b-chat/",
        "pvc://models/zai-org/glm-4-9b-chat",
    ],
)
def test_catalog_names_match_any_spelling(source):
    found = catalog_config(source)
    assert found is not None
    assert found[0] == "THUDM/glm-4-9b-chat"


def test_unknown_names_and_bare_claims_are_not_in_the_catalog():
    assert lookup_model("hf://someone/some-model") is None
    assert lookup_model("pvc://models") is None
    assert repo_id("pvc://models") is None
    assert repo_id("https://host/org/name") == "org/name"


def test_chatglm_config_gives_the_same_shape_as_its_hf_conversion():
    chatglm = lookup_model("THUDM/glm-4-9b-chat")
    hf = shape_from_config(GLM_HF, "glm-hf")
    assert chatglm is not None
    for attr in (
        "parameters",
        "num_layers",
        "num_kv_heads",
        "head_dim",
        "linear_parameters",
        "linear_out_features",
    ):
        assert getattr(chatglm, attr) == getattr(hf, attr), attr


def test_autoglm_phone_and_glm41v_count_the_language_model_and_the_vision_tower():
    phone = lookup_model("zai-org/AutoGLM-Phone-9B")
    thinking = lookup_model("THUDM/GLM-4.1V-9B-Thinking")
    assert phone is not None
    assert thinking is not None
    assert phone.parameters == thinking.parameters == 10_292_777_472  # transformers' Glm4v count
    assert phone.vision_parameters == 892_498_432
    assert (phone.num_layers, phone.num_kv_heads, phone.head_dim) == (40, 2, 128)


def test_two_non_glm_models_are_in_the_catalog():
    llama = lookup_model("meta-llama/Llama-3.1-8B-Instruct")
    qwen = lookup_model("qwen/qwen2.5-7b-instruct")
    assert llama is not None
    assert qwen is not None
    assert round(llama.parameters / 1e9, 2) == 8.03
    assert round(qwen.parameters / 1e9, 2) == 7.62
    assert (llama.num_kv_heads, llama.head_dim) == (8, 128)
    assert (qwen.num_kv_heads, qwen.head_dim) == (4, 128)


def test_missing_kv_heads_means_multi_head_and_missing_head_dim_is_hidden_over_heads():
    cfg = {
        "hidden_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "intermediate_size": 1024,
        "vocab_size": 1000,
        "head_dim": None,
    }
    s = shape_from_config(cfg, "tiny")
    assert s.num_kv_heads == 8
    assert s.head_dim == 64


def test_tied_embeddings_count_one_matrix():
    untied = shape_from_config({**GLM_HF, "tie_word_embeddings": False})
    tied = shape_from_config({**GLM_HF, "tie_word_embeddings": True})
    assert untied.parameters - tied.parameters == 151552 * 4096


def test_nested_text_config_is_read():
    nested = {
        "model_type": "glm4v",
        "text_config": {k: v for k, v in GLM_HF.items() if k != "model_type"},
        "tie_word_embeddings": False,
    }
    s = shape_from_config(nested, "multimodal")
    assert (s.num_layers, s.num_kv_heads, s.hidden_size) == (40, 2, 4096)


@pytest.mark.parametrize("missing", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"])
def test_bad_config_names_the_missing_key(missing):
    cfg = {k: v for k, v in GLM_HF.items() if k != missing}
    with pytest.raises(MemoryFitError, match=repr(missing)) as info:
        shape_from_config(cfg, "org/broken")
    assert info.value.field_path == "spec.model.shape"
    assert "org/broken" in str(info.value)


def test_bad_chatglm_config_names_its_own_key():
    cfg = {
        "model_type": "chatglm",
        "hidden_size": 4096,
        "num_layers": 40,
        "num_attention_heads": 32,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "kv_channels": 128,
        "ffn_hidden_size": 13696,
    }
    with pytest.raises(MemoryFitError, match="padded_vocab_size"):
        shape_from_config(cfg, "THUDM/x")


def test_non_numeric_and_moe_configs_are_refused_clearly():
    with pytest.raises(MemoryFitError, match="not a number"):
        shape_from_config({**GLM_HF, "hidden_size": "big"})
    with pytest.raises(MemoryFitError, match="mixture-of-experts"):
        shape_from_config({**GLM_HF, "num_local_experts": 8})
    with pytest.raises(MemoryFitError, match="not a multiple"):
        shape_from_config({**GLM_HF, "num_key_value_heads": 3})
