"""``/v1/chat/completions``: messages (text, and screenshots for a vision model) through the chat
template, text out, whole or streamed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from autoglm_runtime.chat import ImageRef, split_messages
from autoglm_runtime.engine import Engine, EngineError, EngineNotReadyError
from autoglm_runtime.errors import OpenAIError
from autoglm_runtime.metrics import RuntimeMetrics
from autoglm_runtime.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Usage,
    new_id,
    now,
)
from autoglm_runtime.serving.base import ChunkFactory, Disconnected, Serving, never_disconnected
from autoglm_runtime.serving.errors import engine_error
from autoglm_runtime.serving.models import ModelServing
from autoglm_runtime.settings import RuntimeSettings
from autoglm_runtime.vision import RemoteImages, decode_image_url


class ChatServing(Serving):
    def __init__(
        self, engine: Engine, settings: RuntimeSettings, metrics: RuntimeMetrics, models: ModelServing
    ) -> None:
        super().__init__(engine, settings, metrics, models)
        # Decoding and preprocessing screenshots is CPU work (~0.5 s each): off the event loop, a
        # few at a time, so /healthz and streams keep answering while a burst of images is decoded.
        self.image_slots = asyncio.Semaphore(settings.image_decode_concurrency)
        self.remote_images = RemoteImages.from_settings(settings)

    async def create(
        self, body: ChatCompletionRequest, disconnected: Disconnected = never_disconnected
    ) -> ChatCompletion | AsyncIterator[str]:
        """The chat completion, or its server-sent events when ``body.stream``."""
        self.models.check(body.model)
        prompt_ids, images = await self.prompt(body)
        handle = await self.submit(prompt_ids, self.sampling(body, body.token_limit), "messages", images)
        rid, ts, model = new_id("chatcmpl"), now(), self.models.name
        if body.stream:

            def final(usage: Usage) -> dict[str, Any]:
                return ChatCompletionChunk(
                    id=rid, created=ts, model=model, choices=[], usage=usage
                ).model_dump()

            include = bool(body.stream_options and body.stream_options.include_usage)
            return self.stream(handle, _chunks(rid, ts, model), include, final)
        text = await self.collect(handle, disconnected)
        return ChatCompletion(
            id=rid,
            created=ts,
            model=model,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=handle.finish_reason)],
            usage=Usage.of(handle.prompt_tokens, handle.completion_tokens),
        )

    async def prompt(self, body: ChatCompletionRequest) -> tuple[list[int], Any]:
        """The prompt's token ids and its prepared images (None without images)."""
        engine = self.engine
        if not engine.ready:
            raise engine_error(EngineNotReadyError("the model is still loading"), "messages")
        messages, refs = split_messages(
            body.messages, vision=engine.vision is not None, model_name=self.models.name
        )
        images = await self.prepare_images(refs) if refs else None
        try:
            prompt_ids = await asyncio.to_thread(engine.chat_prompt, messages, images)
        except EngineError as exc:
            raise engine_error(exc, "messages") from exc
        except Exception as exc:  # a template that rejects these messages (e.g. role order)
            raise OpenAIError(
                f"messages do not fit the model's chat template: {exc}", param="messages"
            ) from exc
        return prompt_ids, images

    async def prepare_images(self, refs: list[ImageRef]) -> Any:
        """Decode and preprocess the request's images (their MultiModalInputs)."""
        settings, vision = self.settings, self.engine.vision
        if len(refs) > settings.max_images_per_request:
            raise OpenAIError(
                f"{len(refs)} images in one request; this server accepts at most {settings.max_images_per_request}",
                param=refs[settings.max_images_per_request].param,
                code="too_many_images",
            )

        async def decode(ref: ImageRef) -> Any:
            async with self.image_slots:
                return await asyncio.to_thread(
                    decode_image_url, ref.url, ref.param, settings.max_decoded_pixels, self.remote_images
                )

        decoded = await asyncio.gather(*(decode(ref) for ref in refs))
        async with self.image_slots:
            return await asyncio.to_thread(vision.prepare, list(decoded), [r.param for r in refs])


def _chunks(rid: str, created: int, model: str) -> ChunkFactory:
    """Stream chunks; the first delta names the role."""
    first = True

    def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
        nonlocal first
        delta = ChatDelta(role="assistant" if first else None, content=text)
        first = False
        choice = ChatChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=rid, created=created, model=model, choices=[choice]).model_dump(
            exclude_none=True
        )

    return chunk
