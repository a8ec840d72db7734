"""Images in, safely: data-URL decoding refusals, content parts, image tokens, the VLM loader in
each quantization, and image requests in the continuous batch (identical alone and batched)."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from autoglm_runtime.chat import ContentError, split_messages
from autoglm_runtime.schemas import ChatMessage
from autoglm_runtime.vision import ImageInputError, decode_image_url
from tests.runtime.conftest import png_data_url

LIMIT = 40_000_000
PARAM = "messages[1].content[0].image_url"


def _data(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A 1-bit PNG that declares width x height pixels in ~100 kB (all zero rows compress well)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = zlib.compress(row * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_decode(fmt: str) -> None:
    image = decode_image_url(png_data_url(64, 48, fmt=fmt), PARAM, LIMIT)
    assert image.size == (64, 48)
    assert image.mode == "RGB"


def test_decompression_bomb_is_refused_from_its_header() -> None:
    raw = bomb_png()
    assert len(raw) < 200_000
    with pytest.raises(ImageInputError) as refused:
        decode_image_url(_data(raw), PARAM, LIMIT)
    assert refused.value.param == PARAM
    assert refused.value.code == "image_too_large"
    assert "30000x30000" in refused.value.message or "more pixels" in refused.value.message


def _png_bytes() -> bytes:
    return base64.b64decode(png_data_url(64, 64).split(",", 1)[1])


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("data:image/png;base64,@@@not base64@@@", "invalid base64"),
        (_data(b"hello, not an image"), "not a PNG, JPEG or WebP image"),
        (_data(_png_bytes()[:120]), "truncated or corrupt"),
        (
            _data(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
            "unsupported image type image/svg+xml",
        ),
        (_data(b"RIFF....WAVE", "audio/wav"), "unsupported image type audio/wav"),
        ("data:image/png,rawbytes", "must be base64"),
        ("https://example.com/screen.png", "remote image URLs are not fetched"),
        ("file:///etc/passwd", "unsupported image URL scheme file:"),
        ("/etc/passwd", "unsupported image URL scheme"),
        (_data(b""), "empty"),
    ],
)
def test_bad_images_are_refused_naming_the_part(url: str, text: str) -> None:
    with pytest.raises(ImageInputError) as refused:
        decode_image_url(url, PARAM, LIMIT)
    assert text in refused.value.message
    assert refused.value.param == PARAM
    assert refused.value.status == 400


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(ImageInputError, match="1080x2400 = 2592000 pixels"):
        decode_image_url(png_data_url(1080, 2400), PARAM, 1_000_000)


def _messages(*contents: Any) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=c) for c in contents]


def test_content_parts() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "go"}]
    messages, images = split_messages(_messages("Hi", parts), vision=True, model_name="m")
    assert messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "go"}]
    assert [(i.url, i.param) for i in images] == [("data:x", "messages[1].content[0].image_url")]
    # A text-only model: lists of text parts become strings; an image names the part.
    messages, _ = split_messages(
        _messages([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        vision=False,
        model_name="m",
    )
    assert messages == [{"role": "user", "content": "ab"}]
    with pytest.raises(ContentError) as refused:
        split_messages(_messages("x", parts), vision=False, model_name="tiny")
    assert refused.value.param == "messages[1].content[0]"
    assert "model 'tiny' has no vision input" in refused.value.message
    with pytest.raises(ContentError, match="unsupported content part type 'input_audio'"):
        split_messages(_messages([{"type": "input_audio", "input_audio": {}}]), vision=True, model_name="m")


# --- the model --------------------------------------------------------------------------------------


def test_a_phone_screenshot_becomes_3354_image_tokens(tiny_vlm_loaded: Any) -> None:
    vision = tiny_vlm_loaded.vision
    assert vision is not None
    image = decode_image_url(png_data_url(1080, 2400), PARAM, LIMIT)
    mm = vision.prepare([image], [PARAM])
    assert [list(g) for g in mm.image_grid_thw.tolist()] == [[1, 172, 78]]
    assert mm.tokens_per_image == (3354,)
    ids = vision.expand([1, vision.image_token_id, 2], mm)
    assert len(ids) == 3354 + 2


def test_max_image_pixels_caps_the_tokens(tiny_vlm_dir: Path) -> None:
    from autoglm_runtime.vision import VisionProcessor, load_image_processor

    processor = VisionProcessor(load_image_processor(str(tiny_vlm_dir)), 9, max_image_pixels=500_000)
    mm = processor.prepare([decode_image_url(png_data_url(1080, 2400), PARAM, LIMIT)], [PARAM])
    assert mm.tokens_per_image[0] * 28 * 28 <= 500_000
    assert mm.tokens_per_image[0] < 3354


@pytest.mark.parametrize("mode", ["none", "int8", "nf4"])
def test_vlm_loads_with_only_the_language_model_quantized(tiny_vlm_dir: Path, mode: str) -> None:
    import bitsandbytes as bnb
    import torch

    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    loaded = load_model(RuntimeSettings(model=str(tiny_vlm_dir), quantization=mode, compute_dtype="fp32"))
    assert loaded.vision is not None
    families: dict[str, set[str]] = {"language": set(), "vision": set(), "lm_head": set()}
    for name, module in loaded.model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        family = (
            "vision" if ".visual." in f".{name}" else "lm_head" if name.endswith("lm_head") else "language"
        )
        if isinstance(module, bnb.nn.Linear8bitLt):
            families[family].add("int8")
        elif isinstance(module, bnb.nn.Linear4bit):
            families[family].add("4bit")
        else:
            families[family].add(str(module.weight.dtype))
    want = {"none": "torch.float32", "int8": "int8", "nf4": "4bit"}[mode]
    assert families["language"] == {want}, families
    assert families["vision"] == {"torch.float32"}, families  # the vision tower stays 16/32-bit
    assert families["lm_head"] == {"torch.float32"}, families

    # And it serves a screenshot step in that mode: the quantized language model after the vision tower.
    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner, SamplingParams

    engine = Engine(EngineConfig(max_input_tokens=16384))
    engine.start(ModelRunner(loaded.model, loaded.tokenizer, vision=loaded.vision), "autoglm-phone-9b")
    try:
        ids, mm = _image_chat(engine, 1080, 2400, "Open settings")

        async def one() -> Any:
            handle = await engine.submit(ids, SamplingParams(max_tokens=4, temperature=0.0, min_tokens=4), mm)
            await handle.collect()
            return handle

        handle = asyncio.run(one())
        assert handle.completion_tokens == 4
        assert handle.prompt_tokens > 3354
    finally:
        engine.stop()


def _image_chat(engine: Any, width: int, height: int, text: str) -> tuple[list[int], Any]:
    vision = engine.vision
    image = decode_image_url(png_data_url(width, height), PARAM, LIMIT)
    mm = vision.prepare([image], [PARAM])
    messages = [
        {"role": "system", "content": "You are a phone agent."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
    return engine.chat_prompt(messages, mm), mm


@pytest.fixture
def make_vlm_engine(tiny_vlm_loaded: Any) -> Any:
    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner

    engines: list[Engine] = []

    def make(**config: Any) -> Engine:
        engine = Engine(EngineConfig(max_input_tokens=16384, **config))
        runner = ModelRunner(tiny_vlm_loaded.model, tiny_vlm_loaded.tokenizer, vision=tiny_vlm_loaded.vision)
        engine.start(runner, "autoglm-phone-9b")
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


async def test_image_requests_are_identical_alone_and_batched(make_vlm_engine: Any) -> None:
    """GLM-4V's 3-D rotary positions are per row: rows joining a running batch keep their own."""
    import torch

    from autoglm_runtime.engine import SamplingParams

    # Prefix reuse off: the second time round every prompt would be found in the cache and finish
    # before the next one arrives, so nothing would join a running batch.
    engine = make_vlm_engine(max_batch_size=8, batch_window_ms=0, prefix_caching=False)
    greedy = SamplingParams(max_tokens=12, temperature=0.0, min_tokens=12)
    requests = [
        _image_chat(engine, 1080, 2400, "Open settings"),
        _image_chat(engine, 640, 480, "Tap OK"),
        (engine.chat_prompt([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]), None),
    ]
    alone = []
    for ids, mm in requests:
        handle = await engine.submit(ids, greedy, mm)
        await handle.collect()
        alone.append(list(handle._request.generated))
    # Alone = transformers' own generate (its 3-D positions), so the engine's positions are right.
    ids, mm = requests[0]
    model = engine.runner.model
    x = torch.tensor([ids])
    reference = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        pixel_values=mm.pixel_values,
        image_grid_thw=mm.image_grid_thw,
        mm_token_type_ids=(x == engine.vision.image_token_id).int(),
        max_new_tokens=12,
        min_new_tokens=12,
        do_sample=False,
    )
    assert reference[0, len(ids) :].tolist() == alone[0]
    # Together, and staggered so the later rows join a batch that is already decoding.
    long_text = SamplingParams(max_tokens=200, temperature=0.0, min_tokens=200)
    runner = await engine.submit(requests[2][0], long_text)
    handles = []
    for ids, mm in requests:
        handles.append(await engine.submit(ids, greedy, mm))
        await asyncio.sleep(0.05)
    await asyncio.gather(*(h.collect() for h in handles), runner.collect())
    assert [list(h._request.generated) for h in handles] == alone
    assert engine.stats().max_batch_seen >= 3
    assert handles[0].prompt_tokens > 3354  # image tokens count in the prompt


def test_frequency_and_presence_penalties_follow_openai(tiny_loaded: Any) -> None:
    import torch

    from autoglm_runtime.engine import EngineRequest, ModelRunner, SamplingParams

    runner = ModelRunner(tiny_loaded.model, tiny_loaded.tokenizer)
    runner.eos_ids = set()
    logits = torch.zeros((1, 10))
    logits[0, 3] = 1.0
    logits[0, 4] = 0.9
    loop = asyncio.new_event_loop()
    try:
        once = EngineRequest(
            [1], SamplingParams(temperature=0.0, frequency_penalty=0.2), loop, asyncio.Queue(), 0.0
        )
        once.generated = [3]
        assert runner.sample(logits.clone(), [once]) == [4]  # 1.0 - 1 x 0.2 = 0.8 < 0.9
        lucky = EngineRequest(
            [1], SamplingParams(temperature=0.0, frequency_penalty=0.05), loop, asyncio.Queue(), 0.0
        )
        lucky.generated = [3]
        assert runner.sample(logits.clone(), [lucky]) == [3]  # 0.95 > 0.9
        twice = EngineRequest(
            [1], SamplingParams(temperature=0.0, frequency_penalty=0.05), loop, asyncio.Queue(), 0.0
        )
        twice.generated = [3, 3, 3]
        assert runner.sample(logits.clone(), [twice]) == [4]  # 1.0 - 3 x 0.05 = 0.85
        presence = EngineRequest(
            [1], SamplingParams(temperature=0.0, presence_penalty=0.2), loop, asyncio.Queue(), 0.0
        )
        presence.generated = [3, 3, 3]
        out = logits.clone()
        assert runner.sample(out, [presence]) == [4]
        assert float(out[0, 3]) == pytest.approx(0.8)  # presence counts once, however often
        negative = EngineRequest(
            [1], SamplingParams(temperature=0.0, frequency_penalty=-2.0), loop, asyncio.Queue(), 0.0
        )
        negative.generated = [4]
        assert runner.sample(logits.clone(), [negative]) == [4]  # a negative penalty favours repeats
    finally:
        loop.close()


async def test_generation_stops_at_every_eos_id(tiny_vlm_loaded: Any) -> None:
    """The model's generation_config lists several EOS ids; an answer ends at whichever comes, with
    no text after it (the Open-AutoGLM client parses the action and fails on trailing text)."""
    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner, SamplingParams

    eos_ids = list(tiny_vlm_loaded.model.generation_config.eos_token_id)
    assert len(eos_ids) == 3
    word = tiny_vlm_loaded.tokenizer("fox", add_special_tokens=False)["input_ids"][0]
    for eos in eos_ids:

        class Scripted(ModelRunner):
            """Answers `fox fox <eos> fox`: the last token must never be reached."""

            def sample(
                self, logits: Any, requests: Any, script: tuple[int, ...] = (word, word, eos, word)
            ) -> list[int]:
                return [script[len(r.generated)] for r in requests]

        runner = Scripted(tiny_vlm_loaded.model, tiny_vlm_loaded.tokenizer, vision=tiny_vlm_loaded.vision)
        engine = Engine(EngineConfig())
        engine.start(runner, "m")
        try:
            ids = engine.chat_prompt([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
            handle = await engine.submit(ids, SamplingParams(max_tokens=10, temperature=0.0))
            text = await handle.collect()
        finally:
            engine.stop()
        assert handle.finish_reason == "stop", eos
        assert handle.completion_tokens == 3, eos
        assert text == tiny_vlm_loaded.tokenizer.decode([word, word]), eos


def test_pixels_wait_in_the_vision_towers_dtype(tiny_vlm_dir: Path) -> None:
    """Queued image requests hold their pixel values: half the memory in a 16-bit model."""
    import torch

    from autoglm_runtime.loader import load_model
    from autoglm_runtime.settings import RuntimeSettings

    loaded = load_model(RuntimeSettings(model=str(tiny_vlm_dir), quantization="bf16", warmup=False))
    mm = loaded.vision.prepare([decode_image_url(png_data_url(1080, 2400), PARAM, LIMIT)], [PARAM])
    assert mm.pixel_values.dtype == torch.bfloat16


async def test_image_tokens_count_against_max_input_tokens(make_vlm_engine: Any) -> None:
    from autoglm_runtime.engine import Engine, EngineConfig, PromptTooLongError, SamplingParams

    engine = make_vlm_engine()
    ids, mm = _image_chat(engine, 1080, 2400, "Open settings")
    small = Engine(EngineConfig(max_input_tokens=2048))
    small.start(engine.runner, "autoglm-phone-9b")
    try:
        with pytest.raises(
            PromptTooLongError, match=rf"prompt has {len(ids)} tokens; this server accepts at most 2048"
        ):
            await small.submit(ids, SamplingParams(max_tokens=2), mm)
    finally:
        small.stop()
