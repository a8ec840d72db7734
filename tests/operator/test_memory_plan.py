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
from autoglm_operator.memory.estimator import weights_bytes
from autoglm_operator.memory.types import GIB

GLM = "hf://THUDM/glm-4-9b-chat"


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


def test_kv_cache_is_layers_heads_dim_times_batch_times_tokens():
    shape = lookup_model(GLM)
    assert shape is not None
    e = estimate(shape, "bf16", None, 0, workload=Workload(4, 1000, 24))
    assert e.kv_tokens == 4 * 1024
    assert e.kv_cache_bytes == 2 * 40 * 2 * 128 * 2 * 4 * 1024


@pytest.mark.parametrize(
    ("product", "chosen", "fits"),
    [
        ("T4", "nf4", False),
        ("L4", "int8", True),
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


def test_auto_never_picks_bf16_on_a_t4_and_fits_with_a_smaller_batch():
    plan = plan_memory(spec(resources=gpu("T4"), serving={"maxBatchSize": 2}))
    assert plan.quantization in {"fp16", "int8", "nf4"}
    assert plan.fits
    assert "bf16 skipped: compute capability 7.5 < 8.0" in plan.reason
    bf16 = plan.estimate_for("bf16")
    assert bf16 is not None
    assert not bf16.supported
    assert not bf16.fits


def test_t4_defaults_nothing_fits_and_the_reason_says_what_to_change():
    plan = plan_memory(spec(resources=gpu("T4")))
    assert not plan.fits
    assert plan.reason.startswith("nothing fits on Tesla-T4")
    assert "maxBatchSize <=" in plan.reason


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
    plan = plan_memory(spec(quantization="bf16", resources=gpu("T4"), serving={"maxBatchSize": 1}))
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


def test_status_and_human_string():
    plan = plan_memory(spec())
    status = plan.to_status()
    assert isinstance(status, api.MemoryEstimateStatus)
    assert status.fits is True
    assert status.weights_gib == 9.9
    assert status.total_gib == round(plan.chosen.total_bytes / GIB, 1)
    assert plan.estimated_gpu_memory == f"{status.total_gib:.1f}Gi"
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
    assert info.value.field == "spec.model.source"
    with pytest.raises(MemoryFitError, match="headDim") as info:
        plan_memory(spec(model={"source": "pvc://models/custom", "shape": {"parameters": 10**9}}))
    assert info.value.field == "spec.model.shape"


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
    assert info.value.field == "spec.model.source"


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
    assert "2 x 40 layers x 2 KV heads x 128 head dim x 2 bytes = 40 KiB per token" in out
    assert "x 8 batch x (4096 input + 512 new tokens) = 36864 tokens -> 1.4 GiB" in out
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
    assert data["kv_cache"]["tokens"] == 36864
    bf16 = next(r for r in data["table"] if r["quantization"] == "bf16")
    assert bf16["total_bytes"] == bf16["weights_bytes"] + bf16["kv_cache_bytes"] + bf16["overhead_bytes"]
    assert data["status"]["weightsGib"] == 17.5


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
        ],
        capsys,
    )
    assert "x 1 batch x (1792 input + 256 new tokens) = 2048 tokens" in out
    assert "bf16 skipped" in out
    assert rc == 0


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
