"""On a CUDA machine: the GPU paths the CPU suite can only fake. Skipped without CUDA (CI has none).

Run them where a GPU exists with ``pytest -m gpu tests/runtime/test_gpu.py``; they report the card.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_visible_gpus_report_their_memory_and_capability():
    from autoglm_runtime.memory import visible_gpus

    gpus = visible_gpus()
    assert len(gpus) == torch.cuda.device_count() >= 1
    for gpu in gpus:
        assert gpu.total_bytes > 1024**3, gpu
        print(
            f"GPU {gpu.index}: {gpu.name}, {gpu.total_bytes / 1024**3:.1f} GiB, cc {gpu.compute_capability}"
        )


def test_memory_fraction_caps_the_allocator():
    from autoglm_runtime.memory import apply_gpu_fraction, plan_device_budget

    plan = plan_device_budget(75, 10)
    apply_gpu_fraction(plan)
    try:
        budget = plan.gpu_budget_bytes[0]
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(budget * 1.5), dtype=torch.uint8, device="cuda:0")
        ok = torch.empty(int(budget * 0.5), dtype=torch.uint8, device="cuda:0")
        del ok
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


@pytest.mark.parametrize("mode", ["bf16", "int8", "nf4"])
def test_quantized_load_and_generate_on_the_gpu(tiny_model_dir: Path, mode: str):
    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    loaded = load_model(RuntimeSettings(model=str(tiny_model_dir), quantization=mode))
    assert loaded.device.startswith("cuda")
    assert all(p.device.type == "cuda" for p in loaded.model.parameters())
    ids = loaded.tokenizer("Hello", return_tensors="pt").to(loaded.device)
    ids.pop("token_type_ids", None)  # some tokenizers return them; generate refuses them
    out = loaded.model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[-1] == ids["input_ids"].shape[-1] + 4
    del loaded
    torch.cuda.empty_cache()


def test_footprints_shrink_with_quantization_on_the_gpu(tmp_path: Path):
    from autoglm_runtime.devmodels import build_random_glm
    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    model_dir = build_random_glm(tmp_path / "glm", target_params=150_000_000)
    sizes = {}
    for mode in ("bf16", "int8", "nf4"):
        loaded = load_model(RuntimeSettings(model=str(model_dir), quantization=mode, warmup=False))
        sizes[mode] = loaded.memory_bytes
        del loaded
        torch.cuda.empty_cache()
    assert sizes["nf4"] <= 0.36 * sizes["bf16"]
    assert sizes["int8"] <= 0.6 * sizes["bf16"]


async def test_paged_engine_on_the_gpu_stays_within_the_estimators_memory(tmp_path: Path):
    """Greedy output on CUDA (bf16) with the token budget, and peak memory above the loaded model
    within 10% of kvplan's prediction (the KV pool + one step's activations + fragmentation)."""
    import asyncio

    from autoglm_runtime import kvplan
    from autoglm_runtime.devmodels import build_random_glm
    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner, SamplingParams
    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    loaded = load_model(RuntimeSettings(model=str(build_random_glm(tmp_path / "glm")), quantization="bf16"))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    config = EngineConfig(max_batch_size=9, max_batch_tokens=512, kv_cache_tokens=8192, max_input_tokens=4096)
    engine = Engine(config)
    engine.start(ModelRunner(loaded.model, loaded.tokenizer, loaded.device), "glm")
    try:
        params = SamplingParams(max_tokens=64, temperature=0, min_tokens=64)
        streams = [await engine.submit(f"stream {i}", params) for i in range(8)]
        await asyncio.sleep(0.2)
        long = await engine.submit("x " * 1800, SamplingParams(max_tokens=1, temperature=0))
        await asyncio.gather(*(h.collect() for h in [*streams, long]))
    finally:
        engine.stop()
    peak = torch.cuda.max_memory_allocated() - base
    runner = engine.runner
    c = runner.text_config
    activation = kvplan.activation_bytes(
        hidden_size=c.hidden_size, mlp_width=c.intermediate_size, vocab_size=c.vocab_size,
        quantization="bf16", batch_tokens=512, max_rows=9, dtype_bytes=2,
    )  # fmt: skip
    pool = 8192 * runner.kv_bytes_per_token()
    predicted = pool + activation + kvplan.fragmentation_bytes(pool + activation)
    print(
        f"{torch.cuda.get_device_name()}: peak {peak / 2**20:.1f} MiB, predicted {predicted / 2**20:.1f} MiB"
    )
    assert 0.9 * predicted <= peak <= 1.1 * predicted
