"""Estimates, the auto choice, status, the CLI, the hub look-up (against a local server) and no torch."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from autoglm_operator import api
from autoglm_operator.commands import estimate as estimate_cmd
from autoglm_operator.memory import (
    MemoryFitError,
    Workload,
    estimate,
    lookup_model,
    plan_memory,
    resolve_shape,
)
from autoglm_operator.memory.estimator import CUDA_CONTEXT_BYTES, weights_bytes
from autoglm_operator.memory.gpus import lookup_gpu
from autoglm_operator.memory.types import GIB, GpuInfo
from autoglm_runtime import kvplan
from tests.conftest import REPO

GLM = "hf://THUDM/glm-4-9b-chat"
PHONE_EXAMPLE = REPO / "examples" / "autoglm-phone-9b-nf4-autoscaling.yaml"


def spec(**over: Any) -> api.AutoGLMDeploymentSpec:
    body: dict[str, Any] = {"model": {"source": GLM}, "resources": {"gpu": {"product": "L4"}}}
    for key, value in over.items():
        body[key] = value
    return api.AutoGLMDeploymentSpec.model_validate(body)


def gpu(product: str, **extra: Any) -> dict[str, Any]:
    return {"gpu": {"product": product, **extra}}


def test_weights_of_glm4_9b_per_mode_match_the_reference_numbers():
    shape = lookup_model(GLM)
    assert shape is not None
    assert round(weights_bytes(shape, "bf16") / GIB, 1) == 17.5
    assert round(weights_bytes(shape, "int8") / GIB, 1) == 9.9
    assert 6.1 <= weights_bytes(shape, "nf4") / GIB <= 6.6
    assert weights_bytes(shape, "nf4", double_quant=False) > weights_bytes(shape, "nf4")
    assert weights_bytes(shape, "none") == weights_bytes(shape, "bf16")  # bf16 checkpoint


def test_kv_cache_reserves_one_full_length_request_in_whole_blocks():
    shape = lookup_model(GLM)
    assert shape is not None
    e = estimate(shape, "bf16", None, 0, workload=Workload(4, 1000, 24))
    assert e.request_tokens == 1024
    assert e.kv_tokens == 1024  # 64 blocks of 16: the batch size no longer multiplies it
    assert e.kv_cache_bytes == 2 * 40 * 2 * 128 * 2 * 1024
    assert estimate(shape, "bf16", None, 0, workload=Workload(4, 1000, 25)).kv_tokens == 1040


def test_activations_follow_the_step_token_budget_not_the_batch():
    shape = lookup_model(GLM)
    assert shape is not None
    l4 = lookup_gpu("L4")
    assert l4 is not None
    gpu_info = GpuInfo(l4.product, l4.memory_mib * 2**20, l4.compute_capability)

    def act(**w: Any) -> int:
        return estimate(shape, "int8", gpu_info, 1, workload=Workload(**w)).activation_bytes

    assert estimate(shape, "int8", gpu_info, 1).step_tokens == kvplan.DEFAULT_BATCH_TOKENS_GPU
    assert estimate(shape, "int8", None, 0).step_tokens == kvplan.DEFAULT_BATCH_TOKENS_CPU
    assert act(max_batch_tokens=4096) > act(max_batch_tokens=2048) > act(max_batch_tokens=512)
    # the batch only adds logits rows (and never lowers the step under one token per row)
    assert act(max_batch_size=16) - act(max_batch_size=1) == 15 * 151552 * 4 * kvplan.LOGITS_COPIES
    assert estimate(shape, "int8", gpu_info, 1, workload=Workload(64, max_batch_tokens=32)).step_tokens == 64
    # longer prompts are prefilled in chunks: they cost KV blocks, not activations
    assert act(max_input_tokens=100_000) == act()


@pytest.mark.parametrize(
    ("product", "chosen", "fits"),
    [
        ("T4", "int8", True),
        ("L4", "int8", True),
        ("A10G", "int8", True),
        ("A100-40GB", "bf16", True),
        ("A100-80GB", "bf16", True),
        ("H100", "bf16", True),
        ("H200", "bf16", True),
    ],
)
def test_auto_choice_for_glm4_9b_with_default_serving_limits(product, chosen, fits):
    plan = plan_memory(spec(resources=gpu(product)))
    assert plan.quantization == chosen
    assert plan.fits is fits
    assert plan.requested == "auto"
    assert [e.quantization for e in plan.table] == ["none", "bf16", "fp16", "int8", "nf4", "fp4"]
    assert plan.chosen.concurrent_full_requests is not None
    assert plan.chosen.concurrent_full_requests >= 1


def test_auto_never_picks_bf16_on_a_t4():
    plan = plan_memory(spec(resources=gpu("T4")))
    assert plan.quantization == "int8"
    assert plan.fits
    assert "bf16 skipped: compute capability 7.5 < 8.0" in plan.reason
    bf16 = plan.estimate_for("bf16")
    assert bf16 is not None
    assert not bf16.supported
    assert not bf16.fits


def test_when_nothing_fits_the_reason_names_the_token_limits_that_would():
    def fits_with(**serving: int) -> bool:
        body = {"maxInputTokens": 200_000, **serving}
        return plan_memory(spec(resources=gpu("T4"), quantization="nf4", serving=body)).fits

    plan = plan_memory(spec(resources=gpu("T4"), serving={"maxInputTokens": 200_000}))
    assert not plan.fits
    assert plan.reason.startswith("nothing fits on Tesla-T4")
    assert "nf4 fits with serving.maxInputTokens <= " in plan.reason
    assert "maxBatchSize" not in plan.reason
    length = int(plan.reason.split("serving.maxInputTokens <= ")[1].split()[0])
    assert fits_with(maxInputTokens=length)
    assert not fits_with(maxInputTokens=length + 1)

    plan = plan_memory(spec(resources=gpu("T4"), serving={"maxBatchTokens": 65536}))
    assert not plan.fits
    assert "nf4 fits with serving.maxBatchTokens <= " in plan.reason
    tokens = int(plan.reason.split("serving.maxBatchTokens <= ")[1].split()[0])
    step = {"resources": gpu("T4"), "quantization": "nf4"}
    assert plan_memory(spec(**step, serving={"maxBatchTokens": tokens})).fits
    assert not plan_memory(spec(**step, serving={"maxBatchTokens": tokens + 1})).fits

    plan = plan_memory(spec(resources=gpu("T4"), serving={"maxNewTokens": 1_000_000}))
    assert "even nf4 needs" in plan.reason
    assert "serving.maxInputTokens + serving.maxNewTokens" in plan.reason


def test_l4_reason_shows_why_bf16_was_rejected_and_what_fits():
    plan = plan_memory(spec())
    assert "bf16 needs" in plan.reason
    assert "int8 fits:" in plan.reason
    assert "NVIDIA-L4" in plan.reason


def test_unknown_compute_capability_is_not_bf16():
    plan = plan_memory(spec(resources=gpu("Quantum-X9", memory="80Gi")))
    assert plan.quantization == "fp16"
    assert "compute capability unknown" in plan.reason


def test_explicit_mode_that_does_not_fit_reports_numbers_and_a_suggestion():
    plan = plan_memory(spec(quantization="bf16"))
    assert plan.quantization == "bf16"
    assert not plan.fits
    assert "bf16 needs" in plan.reason
    assert "budget 20.2 GiB" in plan.reason
    assert "suggest int8" in plan.reason


def test_explicit_bf16_on_t4_is_unsupported():
    plan = plan_memory(spec(quantization="bf16", resources=gpu("T4")))
    assert not plan.fits
    assert "compute capability >= 8.0" in plan.reason


def test_budget_is_memory_times_count_times_percent_and_headroom_is_kept():
    plan = plan_memory(
        spec(resources=gpu("L4", count=2), memory={"gpuMemoryPercent": 80, "headroomPercent": 5})
    )
    e = plan.chosen
    assert e.budget_bytes == 2 * 23034 * 2**20 * 80 // 100
    assert e.headroom_bytes == e.budget_bytes * 5 // 100
    assert plan.quantization == "bf16"  # 2 x L4 holds bf16
    assert e.context_bytes == 2 * 512 * 2**20


def test_more_tokens_need_more_memory():
    small = plan_memory(spec(quantization="int8", serving={"maxInputTokens": 1024}))
    big = plan_memory(spec(quantization="int8", serving={"maxInputTokens": 8192}))
    assert big.chosen.kv_cache_bytes > small.chosen.kv_cache_bytes
    assert big.chosen.total_bytes > small.chosen.total_bytes


def test_cpu_budget_is_the_container_limit_share():
    plan = plan_memory(
        spec(resources={"gpu": {"count": 0}, "limits": {"memory": "64Gi"}}, memory={"hostMemoryPercent": 50})
    )
    assert plan.gpu is None
    assert plan.gpu_count == 0
    assert plan.chosen.budget_bytes == 32 * GIB
    unlimited = plan_memory(spec(resources={"gpu": {"count": 0}, "limits": {}}))
    assert unlimited.fits
    assert "fits by definition" in unlimited.reason


def test_cpu_pool_is_sized_only_with_a_memory_limit():
    limited = plan_memory(spec(resources={"gpu": {"count": 0}, "limits": {"memory": "64Gi"}})).chosen
    assert limited.step_tokens == kvplan.DEFAULT_BATCH_TOKENS_CPU
    assert limited.kv_pool_tokens is not None
    assert limited.kv_pool_tokens > 0
    unlimited = plan_memory(spec(resources={"gpu": {"count": 0}, "limits": {}})).chosen
    assert unlimited.kv_pool_tokens is None
    assert unlimited.concurrent_full_requests is None


def test_estimator_pool_is_kvplan_pool_plan_of_the_same_inputs():
    """What the runtime computes after loading (budget, measured weights + context, headroom, one
    step's activations) gives the pool the estimate reports when the measurement matches."""
    plan = plan_memory(
        spec(
            resources=gpu("L4", count=2),
            quantization="int8",
            memory={"gpuMemoryPercent": 85, "headroomPercent": 7},
            serving={"maxBatchSize": 4, "maxBatchTokens": 1024, "maxInputTokens": 8000, "maxNewTokens": 1000},
        )
    )
    e, shape = plan.chosen, plan.shape
    budget = 2 * 23034 * 2**20 * 85 // 100
    weights = weights_bytes(shape, "int8")
    activation = kvplan.activation_bytes(
        hidden_size=4096,
        mlp_width=13696,
        vocab_size=151552,
        quantization="int8",
        batch_tokens=kvplan.step_tokens(1024, 4, on_gpu=True),
        max_rows=4,
        dtype_bytes=2,
    )
    assert e.activation_bytes == activation
    assert e.kv_bytes_per_token == kvplan.kv_bytes_per_token(40, 2, 128, 2) == 40960
    pool = kvplan.pool_fit(
        budget_bytes=budget,
        used_bytes=weights + 2 * CUDA_CONTEXT_BYTES,
        headroom_percent=7,
        activation=activation,
        kv_per_token=40960,
    )
    assert e.budget_bytes == budget
    assert e.kv_pool_tokens == pool.tokens > 0
    assert e.concurrent_full_requests == pool.full_requests(9000)
    assert e.kv_tokens == kvplan.blocks_for(9000) * kvplan.BLOCK_SIZE == 9008
    assert e.fragmentation_bytes == kvplan.fragmentation_bytes(activation + e.kv_cache_bytes)
    # the pool plus what the fit check counts besides it stays inside the usable budget
    pool_bytes = pool.tokens * 40960
    dynamic = pool_bytes + activation
    assert weights + e.context_bytes + dynamic + kvplan.fragmentation_bytes(dynamic) <= e.usable_bytes


def test_fitting_means_the_pool_holds_one_full_length_request():
    for product in ("T4", "L4", "A100-40GB"):
        for mode_plan in plan_memory(spec(resources=gpu(product), serving={"maxInputTokens": 30000})).table:
            if mode_plan.fits:
                assert mode_plan.concurrent_full_requests is not None
                assert mode_plan.concurrent_full_requests >= 1, (product, mode_plan.quantization)


def test_kv_cache_tokens_caps_the_pool():
    free = plan_memory(spec(quantization="int8")).chosen
    capped = plan_memory(spec(quantization="int8", serving={"kvCacheTokens": 10000})).chosen
    assert free.kv_pool_tokens is not None
    assert free.kv_pool_tokens > 10000
    assert capped.kv_pool_tokens == 10000  # 625 blocks
    assert capped.concurrent_full_requests == 2  # 4608-token requests
    assert capped.total_bytes == free.total_bytes


def test_token_rules_of_the_serving_spec():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="maxBatchTokens: must be >= maxBatchSize"):
        spec(serving={"maxBatchSize": 16, "maxBatchTokens": 8})
    with pytest.raises(ValidationError, match="kvCacheTokens: must be >= maxInputTokens"):
        spec(serving={"kvCacheTokens": 4000})
    ok = spec(
        serving={"maxBatchSize": 16, "maxBatchTokens": 16, "kvCacheTokens": 4608, "prefixCaching": False}
    )
    assert (ok.serving.max_batch_tokens, ok.serving.kv_cache_tokens, ok.serving.prefix_caching) == (
        16,
        4608,
        False,
    )
    assert spec().serving.prefix_caching is True
    assert spec().serving.max_batch_tokens is None


def test_status_and_human_string():
    plan = plan_memory(spec())
    status = plan.to_status()
    assert isinstance(status, api.MemoryEstimateStatus)
    assert status.fits is True
    assert status.weights_gib == 9.9
    assert status.total_gib == round(plan.chosen.total_bytes / GIB, 1)
    assert plan.estimated_gpu_memory == f"{status.total_gib:.1f}Gi"
    assert status.kv_pool_tokens == plan.chosen.kv_pool_tokens
    assert status.concurrent_full_requests == plan.chosen.concurrent_full_requests
    assert status.concurrent_full_requests is not None
    assert status.concurrent_full_requests >= 1
    api.AutoGLMDeploymentStatus(
        estimate=status, estimated_gpu_memory=plan.estimated_gpu_memory, quantization=plan.quantization
    )


def test_shape_hints_override_and_describe_unknown_models():
    hints = {
        "parameters": 3_000_000_000,
        "numLayers": 28,
        "numKvHeads": 4,
        "headDim": 128,
        "hiddenSize": 3072,
        "vocabSize": 32000,
    }
    plan = plan_memory(spec(model={"source": "hf://someone/custom-3b", "shape": hints}))
    assert plan.shape.parameters == 3_000_000_000
    assert plan.shape.source == "spec.model.shape"
    assert plan.quantization == "bf16"
    overridden = resolve_shape(api.ModelSpec(source=GLM, shape={"numLayers": 20}))
    assert overridden.num_layers == 20
    assert overridden.parameters == 9_399_951_360


def test_unknown_model_without_hints_names_the_field():
    with pytest.raises(MemoryFitError, match="not in the built-in catalog") as info:
        plan_memory(spec(model={"source": "hf://someone/unknown"}))
    assert info.value.field_path == "spec.model.source"
    with pytest.raises(MemoryFitError, match="headDim") as info:
        plan_memory(spec(model={"source": "pvc://models/custom", "shape": {"parameters": 10**9}}))
    assert info.value.field_path == "spec.model.shape"


def test_unknown_gpu_without_memory_is_a_clear_error():
    with pytest.raises(MemoryFitError, match="set spec.resources.gpu.memory"):
        plan_memory(spec(resources=gpu("Quantum-X9")))


# --- the hub look-up, against a local server speaking the hub's API ---------------------------------


class _Hub(http.server.BaseHTTPRequestHandler):
    config: dict[str, Any] = {}
    total = 0
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's API
        self.seen.append((self.path, self.headers.get("authorization")))
        if self.path.startswith("/acme/tiny/") and self.path.endswith("/resolve/main/config.json"):
            body = json.dumps(self.config).encode()
        elif self.path.startswith("/api/models/acme/tiny"):
            body = json.dumps(
                {"id": "acme/tiny", "safetensors": {"parameters": {"BF16": self.total}, "total": self.total}}
            ).encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hub.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_config_and_parameter_count_from_a_mirror(hub):
    _Hub.config = {
        "model_type": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "vocab_size": 1000,
    }
    _Hub.total = 5_000_000
    from autoglm_operator.memory.hub import fetch_shape

    shape = fetch_shape(f"{hub}/acme/tiny", token="hf_secret")
    assert shape.num_layers == 4
    assert shape.num_kv_heads == 4
    assert shape.head_dim == 64
    assert shape.parameters == 5_000_000  # safetensors total wins over the config formula
    assert any(auth == "Bearer hf_secret" for _, auth in _Hub.seen)


def test_network_is_used_only_when_allowed(hub):
    _Hub.config = {
        "model_type": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "vocab_size": 1000,
    }
    _Hub.total = 0
    model = api.ModelSpec(source="https://mirror.invalid/acme/tiny")
    with pytest.raises(MemoryFitError, match="network is not used"):
        resolve_shape(model)
    assert _Hub.seen == []


def test_allowed_network_resolves_a_model_outside_the_catalog(hub, monkeypatch):
    from autoglm_operator.memory import hub as hub_module

    _Hub.config = {
        "model_type": "qwen2",
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 1000,
    }
    _Hub.total = 0
    real = hub_module.fetch_shape
    # The API only admits https:// mirrors; send this one to the local plain-HTTP server.
    monkeypatch.setattr(
        hub_module, "fetch_shape", lambda src, **kw: real(src.replace("https://mirror.invalid", hub), **kw)
    )
    shape = resolve_shape(
        api.ModelSpec(source="https://mirror.invalid/acme/tiny", revision="main"), allow_network=True
    )
    assert (shape.num_layers, shape.num_kv_heads, shape.source) == (2, 2, "hub")
    assert any(path.endswith("/acme/tiny/resolve/main/config.json") for path, _ in _Hub.seen)


def test_unreachable_hub_is_a_clear_error(hub):
    from autoglm_operator.memory.hub import fetch_config

    with pytest.raises(MemoryFitError, match="HTTP 404") as info:
        fetch_config(f"{hub}/acme/missing")
    assert info.value.field_path == "spec.model.source"


# --- CLI ---------------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    import argparse

    parser = argparse.ArgumentParser()
    estimate_cmd.add_arguments(parser)
    rc = estimate_cmd.run(parser.parse_args(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("model", ["THUDM/glm-4-9b-chat", "zai-org/glm-4-9b-chat"])
def test_cli_table_for_glm4_on_l4(model, capsys):
    rc, out, _ = run_cli(["--model", model, "--gpu", "L4"], capsys)
    assert rc == 0
    assert (
        "2 x 40 layers x 2 KV heads x 128 head dim x 2 bytes = 40 KiB per token, in blocks of 16 tokens"
        in out
    )
    assert "min one request of 4096 input + 512 new tokens = 4608 tokens -> 0.2 GiB; pool " in out
    assert " full-length requests at once" in out
    assert "one step of 2048 tokens (default on a GPU) + logits of 8 rows" in out
    for mode in ("bf16", "fp16", "int8", "nf4"):
        assert any(line.startswith(mode) for line in out.splitlines())
    assert "auto -> int8" in out
    assert "bf16 needs" in out


def test_cli_json_carries_the_same_numbers(capsys):
    rc, out, _ = run_cli(["--model", "THUDM/glm-4-9b-chat", "--gpu", "H100", "-o", "json"], capsys)
    data = json.loads(out)
    assert rc == 0
    assert data["quantization"] == "bf16"
    assert data["kv_cache"]["bytes_per_token"] == 40960
    assert data["kv_cache"]["tokens"] == 4608
    assert data["kv_cache"]["request_tokens"] == 4608
    assert data["kv_cache"]["step_tokens"] == 2048
    assert data["kv_cache"]["pool_tokens"] > 1_000_000  # 80 GB minus 17.5 GiB of weights
    assert data["kv_cache"]["concurrent_full_requests"] == data["kv_cache"]["pool_tokens"] // 4608
    bf16 = next(r for r in data["table"] if r["quantization"] == "bf16")
    assert bf16["total_bytes"] == bf16["weights_bytes"] + bf16["kv_cache_bytes"] + bf16["overhead_bytes"]
    assert bf16["kv_pool_tokens"] == data["kv_cache"]["pool_tokens"]
    assert bf16["kv_pool_bytes"] == bf16["kv_pool_tokens"] * 40960
    assert data["status"]["weightsGib"] == 17.5
    assert data["status"]["kvPoolTokens"] == bf16["kv_pool_tokens"]
    assert data["status"]["concurrentFullRequests"] == bf16["concurrent_full_requests"]


def test_cli_token_flags(capsys):
    rc, out, _ = run_cli(
        [
            "--model",
            "THUDM/glm-4-9b-chat",
            "--gpu",
            "T4",
            "--max-batch",
            "1",
            "--max-tokens",
            "2048",
            "--max-new-tokens",
            "256",
            "--max-batch-tokens",
            "512",
        ],
        capsys,
    )
    assert "min one request of 1792 input + 256 new tokens = 2048 tokens" in out
    assert "one step of 512 tokens (maxBatchTokens) + logits of 1 row" in out
    assert "bf16 skipped" in out
    assert rc == 0


def estimate_json(capsys, *argv: str) -> dict[str, Any]:
    rc, out, err = run_cli([*argv, "-o", "json"], capsys)
    data = json.loads(out)
    assert rc == (0 if data["fits"] else 1), err
    return data


def mode(data: dict[str, Any], quantization: str) -> dict[str, Any]:
    return next(r for r in data["table"] if r["quantization"] == quantization)


def test_estimate_glm4_9b_fits_a_t4_at_the_defaults(capsys):
    data = estimate_json(capsys, "--model", "THUDM/glm-4-9b-chat", "--gpu", "T4")
    assert data["fits"]
    assert data["quantization"] in ("int8", "nf4")  # at least nf4; in fact int8
    nf4 = mode(data, "nf4")
    assert nf4["fits"]
    assert nf4["concurrent_full_requests"] >= 1
    assert mode(data, data["quantization"])["concurrent_full_requests"] >= 1


def test_estimate_glm4_9b_int8_fits_an_l4(capsys):
    data = estimate_json(capsys, "--model", "THUDM/glm-4-9b-chat", "--gpu", "L4", "--quantization", "int8")
    assert data["fits"]
    assert data["kv_cache"]["concurrent_full_requests"] >= 8  # a full batch of full-length requests
    assert not mode(data, "bf16")["fits"]  # 17.5 GiB of bf16 weights leave too little of 18.2 GiB


def test_estimate_autoglm_phone_int8_fits_a_24gb_card_with_the_phone_workload(capsys):
    data = estimate_json(
        capsys,
        "--model",
        "zai-org/AutoGLM-Phone-9B",
        "--gpu",
        "L4",
        "--quantization",
        "int8",
        "--max-input-tokens",
        "22480",
        "--max-new-tokens",
        "3000",
        "--max-batch",
        "2",
    )
    assert data["fits"]
    assert data["kv_cache"]["request_tokens"] == 25480
    assert data["kv_cache"]["tokens"] == 25488
    assert data["kv_cache"]["concurrent_full_requests"] >= 1
    rtx = estimate_json(capsys, "-f", str(PHONE_EXAMPLE), "--quantization", "int8", "--gpu", "RTX4090")
    assert rtx["fits"]
    assert rtx["kv_cache"]["concurrent_full_requests"] >= 1


def test_estimate_of_the_phone_example(capsys):
    data = estimate_json(capsys, "-f", str(PHONE_EXAMPLE))
    assert data["quantization"] == "nf4"
    assert data["fits"]
    assert data["kv_cache"]["concurrent_full_requests"] >= data["kv_cache"]["max_batch_size"]
    int8 = estimate_json(capsys, "-f", str(PHONE_EXAMPLE), "--quantization", "int8")
    assert int8["fits"]


def test_cli_reads_a_cr_from_stdin_and_exits_1_when_it_does_not_fit(capsys, monkeypatch):
    import io

    cr = """
apiVersion: autoglm.io/v1alpha1
kind: AutoGLMDeployment
metadata: {name: glm}
spec:
  model: {source: hf://THUDM/glm-4-9b-chat}
  quantization: bf16
  resources: {gpu: {product: NVIDIA-L4}}
"""
    monkeypatch.setattr(sys, "stdin", io.StringIO(cr))
    rc, out, _ = run_cli(["-f", "-"], capsys)
    assert rc == 1
    assert "== glm" in out
    assert "DOES NOT FIT" in out
    assert "suggest int8" in out


def test_cli_errors_name_the_field(capsys):
    rc, _, err = run_cli(["--model", "THUDM/glm-4-9b-chat", "--gpu", "Quantum-X9"], capsys)
    assert rc == 2
    assert "spec.resources.gpu.product" in err
    assert "Traceback" not in err
    rc, _, err = run_cli(
        ["--model", "THUDM/glm-4-9b-chat", "--gpu", "L4", "--gpu-memory-percent", "5"], capsys
    )
    assert rc == 2
    assert "spec.memory.gpuMemoryPercent" in err


def test_console_script_estimate_runs():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoglm_operator.cli",
            "estimate",
            "--model",
            "THUDM/glm-4-9b-chat",
            "--gpu",
            "A100-80GB",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "auto -> bf16" in proc.stdout


def test_memory_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import autoglm_operator.memory, autoglm_operator.memory.hub, autoglm_operator.commands.estimate\n"
        "from autoglm_operator import api\n"
        "from autoglm_operator.memory import plan_memory\n"
        "s = api.AutoGLMDeploymentSpec.model_validate(\n"
        "    {'model': {'source': 'hf://THUDM/glm-4-9b-chat'}, 'resources': {'gpu': {'product': 'NVIDIA-L4'}}})\n"
        "print(plan_memory(s).quantization, 'torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["int8", "False"]
