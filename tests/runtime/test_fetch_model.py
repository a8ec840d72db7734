"""End to end: a real (tiny, random) GLM checkpoint fetched from the fake hub loads with transformers."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest

from tests.runtime.fetchrepo import Fetcher
from tests.runtime.hubserver import HubServer


@pytest.mark.slow
def test_fetched_folder_loads_with_from_pretrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from autoglm_runtime.devmodels import build_tiny_glm

    source_dir = build_tiny_glm(tmp_path / "built")
    files = {
        p.relative_to(source_dir).as_posix(): p.read_bytes() for p in source_dir.rglob("*") if p.is_file()
    }
    assert any(name.endswith(".safetensors") for name in files)
    files["model.gguf"] = b"GGUF duplicate weights that must not be fetched"

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # only 127.0.0.1 is contacted
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubServer(files, repo_id="zai-org/tiny-glm") as hub:
        result = Fetcher(capsys, tmp_path / "models")(hub.source, "--revision", hub.commit)
    assert result.code == 0, result.err
    folder = result.path
    assert folder == tmp_path / "models" / "zai-org--tiny-glm" / hub.commit
    assert not (folder / "model.gguf").exists()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    original = transformers.AutoModelForCausalLM.from_pretrained(source_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    assert prompt  # the chat template came along
    ids = tokenizer("Hello, world", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
