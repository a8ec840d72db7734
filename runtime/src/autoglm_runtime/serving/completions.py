"""``/v1/completions``: a text prompt (or token ids) in, text out, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from autoglm_runtime.schemas import Completion, CompletionChoice, CompletionRequest, Usage, new_id, now
from autoglm_runtime.serving.base import Disconnected, Serving, never_disconnected


class CompletionServing(Serving):
    async def create(
        self, body: CompletionRequest, disconnected: Disconnected = never_disconnected
    ) -> Completion | AsyncIterator[str]:
        """The completion, or its server-sent events when ``body.stream``."""
        self.models.check(body.model)
        handle = await self.submit(body.prompt, self.sampling(body, body.max_tokens), "prompt")  # type: ignore[arg-type]
        rid, ts, model = new_id("cmpl"), now(), self.models.name
        if body.stream:

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                choice = CompletionChoice(text=text or "", finish_reason=finish)
                return Completion(id=rid, created=ts, model=model, choices=[choice]).model_dump()

            def final(usage: Usage) -> dict[str, Any]:
                return Completion(id=rid, created=ts, model=model, choices=[], usage=usage).model_dump()

            include = bool(body.stream_options and body.stream_options.include_usage)
            return self.stream(handle, chunk, include, final)
        text = await self.collect(handle, disconnected)
        if body.echo and isinstance(body.prompt, str):
            text = body.prompt + text
        return Completion(
            id=rid,
            created=ts,
            model=model,
            choices=[CompletionChoice(text=text, finish_reason=handle.finish_reason)],
            usage=Usage.of(handle.prompt_tokens, handle.completion_tokens),
        )
