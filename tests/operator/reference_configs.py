"""Model configs the memory tests use as references, typed from the published config.json files.

Kept apart from the operator's catalog on purpose: a test that took its expected shape from the
code under test could not catch a wrong catalog entry.
"""

GLM4_9B = {  # THUDM/glm-4-9b-chat-hf (transformers' `glm` model type)
    "hidden_size": 4096,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "intermediate_size": 13696,
    "vocab_size": 151552,
    "attention_bias": True,
    "tie_word_embeddings": False,
}

SMOLLM2_135M = {  # HuggingFaceTB/SmolLM2-135M-Instruct (`llama`)
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
