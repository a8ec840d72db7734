"""The serving units without the app: each API over a started engine, its refusals as OpenAI
errors, and the one Retry-After rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoglm_runtime.chat import ContentError
from autoglm_runtime.engine import (
    EngineNotReadyError,
    GenerationFailedError,
    ModelUnavailableError,
    PromptTooLongError,
    QueueFullError,
)
from autoglm_runtime.errors import OpenAIError, RetryableError, retry_after_header
from autoglm_runtime.metrics import RuntimeMetrics
from autoglm_runtime.schemas import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from autoglm_runtime.serving.chat import ChatServing
from autoglm_runtime.serving.completions import CompletionServing
from autoglm_runtime.serving.errors import engine_error
from autoglm_runtime.serving.models import ModelServing
from autoglm_runtime.settings import RuntimeSettings


def test_retry_after_is_whole_seconds_rounded_up_at_least_one() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 1.1, 9.5)] == ["1", "1", "1", "2", "10"]
    refused = RetryableError("busy", 2.5, status=429, type_="rate_limit_error", code="queue_full")
    assert (refused.status, refused.headers, refused.retry_after) == (429, {"Retry-After": "3"}, 2.5)
    assert refused.body() == {
        "error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "queue_full"}
    }


def test_engine_errors_map_to_statuses_and_retry_after() -> None:
    def shape(err: OpenAIError) -> tuple[int, str, str | None, str | None]:
        return err.status, err.type, err.code, err.headers.get("Retry-After")

    assert shape(engine_error(QueueFullError("full"))) == (429, "rate_limit_error", "queue_full", "1")
    assert shape(engine_error(EngineNotReadyError("loading"))) == (
        503,
        "service_unavailable",
        "not_ready",
        "5",
    )
    assert shape(engine_error(ModelUnavailableError("open", 2.2))) == (
        503,
        "service_unavailable",
        "model_unavailable",
        "3",
    )
    assert shape(engine_error(GenerationFailedError("oom"))) == (
        503,
        "server_error",
        "generation_failed",
        "1",
    )
    too_long = engine_error(PromptTooLongError("long"), "messages")
    assert (too_long.status, too_long.param, too_long.code) == (400, "messages", "context_length_exceeded")
    assert "Retry-After" not in too_long.headers


def test_models_lists_the_served_name_and_refuses_others() -> None:
    models = ModelServing("tiny", ("/models/tiny",), created=7)
    assert models.list().model_dump()["data"] == [
        {"id": "tiny", "object": "model", "created": 7, "owned_by": "autoglm"}
    ]
    models.check("tiny")
    models.check("/models/tiny")
    with pytest.raises(OpenAIError) as refused:
        models.check("gpt-4")
    assert (refused.value.status, refused.value.param, refused.value.code) == (
        404,
        "model",
        "model_not_found",
    )


@pytest.fixture
def units(make_engine: Any, tiny_model_dir: Path) -> tuple[CompletionServing, ChatServing]:
    settings = RuntimeSettings(model=str(tiny_model_dir), served_model_name="tiny")
    engine = make_engine()
    models = ModelServing.from_settings(settings)
    metrics = RuntimeMetrics()
    return CompletionServing(engine, settings, metrics, models), ChatServing(
        engine, settings, metrics, models
    )


async def test_completion_whole_and_streamed(units: tuple[CompletionServing, ChatServing]) -> None:
    completions, _ = units
    body = CompletionRequest(model="tiny", prompt="Hello", max_tokens=4, temperature=0, min_tokens=4)
    whole = await completions.create(body)
    assert isinstance(whole, Completion)
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 4
    assert whole.choices[0].finish_reason == "length"
    events = [e async for e in await completions.create(body.model_copy(update={"stream": True}))]  # type: ignore[union-attr]
    assert events[-1] == "data: [DONE]\n\n"
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert '"finish_reason":"length"' in events[-2]


async def test_collect_gives_up_when_the_client_leaves(units: tuple[CompletionServing, ChatServing]) -> None:
    completions, _ = units

    async def gone() -> bool:
        return True

    body = CompletionRequest(model="tiny", prompt="Hello", max_tokens=200, temperature=0, min_tokens=200)
    with pytest.raises(OpenAIError) as refused:
        await completions.create(body, gone)
    assert (refused.value.status, refused.value.code) == (499, "client_closed")


async def test_chat_answers_and_refuses_images_for_a_text_model(
    units: tuple[CompletionServing, ChatServing],
) -> None:
    _, chat = units
    body = ChatCompletionRequest(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, min_tokens=3
    )
    answer = await chat.create(body)
    assert isinstance(answer, ChatCompletion)
    assert answer.model == "tiny"
    assert answer.choices[0].message.role == "assistant"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_image = ChatCompletionRequest(model="tiny", messages=[{"role": "user", "content": [image]}])
    with pytest.raises(ContentError) as refused:
        await chat.create(with_image)
    assert isinstance(refused.value, OpenAIError)
    assert (refused.value.status, refused.value.code) == (400, "vision_not_supported")
    assert refused.value.param == "messages[0].content[0]"
