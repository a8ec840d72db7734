"""What a client gives the engine and gets back: typed errors, sampling parameters, the stream
handle the HTTP layer iterates, and the engine's configuration and statistics. (The request's state
inside the engine is :mod:`.request_state`.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoglm_runtime.serving_settings import EngineSettings

if TYPE_CHECKING:
    from autoglm_runtime.engine.core import Engine
    from autoglm_runtime.engine.request_state import EngineRequest


# --- errors -------------------------------------------------------------------------------------
class EngineError(Exception):
    """Base of the engine's typed errors; the HTTP layer maps each subclass to a status code."""


class QueueFullError(EngineError):
    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromptTooLongError(EngineError):
    pass


class InvalidRequestError(EngineError):
    pass


class EngineNotReadyError(EngineError):
    pass


class GenerationFailedError(EngineError):
    """The model failed on this request even in a batch of its own (e.g. out of memory)."""


class ModelUnavailableError(EngineError):
    """The circuit breaker is open: the model keeps failing; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeoutError(EngineError):
    pass


# --- requests -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int = 0  # EOS is suppressed until this many tokens (useful with random test models)
    # OpenAI's penalties: logits of already generated tokens lose count x frequency_penalty
    # + (count > 0) x presence_penalty (not a multiplicative repetition penalty).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


@dataclass(frozen=True)
class Delta:
    """One event of a request's stream: new text, and on the last one a finish reason."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | None while streaming
    error: EngineError | None = None


@dataclass
class EngineStats:
    queue_depth: int  # waiting for a batch slot
    running: int  # in the batch now
    inflight: int  # admitted and not finished (waiting + running)
    steps: int  # model steps so far
    max_batch_seen: int
    kv_blocks_total: int = 0
    kv_block_size: int = 0  # token slots per block
    kv_blocks_used: int = 0  # held by running rows
    kv_blocks_cached: int = 0  # free, but holding a reusable prefix
    prefix_query_tokens: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hit_tokens: int = 0  # of those, found (not recomputed)
    preemptions: int = 0  # rows that gave their blocks back and were recomputed later


class EngineConfig(EngineSettings):
    """The engine's configuration: its fields are the engine's part of the serving settings, declared
    once in :mod:`autoglm_runtime.serving_settings` (``None`` = not set: the engine picks)."""

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> EngineConfig:
        return cls(**{name: getattr(settings, name) for name in EngineSettings.model_fields})


class RequestHandle:
    """What :meth:`Engine.submit` returns: iterate it for text deltas, or :meth:`collect` the result."""

    def __init__(self, engine: Engine, request: EngineRequest) -> None:
        self._engine = engine
        self._request = request
        self.finish_reason: str | None = None
        self.text = ""

    @property
    def id(self) -> int:
        return self._request.id

    @property
    def prompt_tokens(self) -> int:
        return len(self._request.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self._request.generated)

    @property
    def time_to_first_token(self) -> float | None:
        r = self._request
        return None if r.first_token_at is None else r.first_token_at - r.submitted_at

    def cancel(self) -> None:
        """Leave the batch at the next step (a client disconnected)."""
        if not self._request.finished:
            self._request.cancelled = True
            self._engine._wake()

    async def __aiter__(self) -> AsyncIterator[str]:
        """Text deltas; raises the engine's error if generation failed."""
        try:
            while True:
                delta = await self._request.queue.get()
                if delta.error is not None:
                    raise delta.error
                if delta.text:
                    self.text += delta.text
                    yield delta.text
                if delta.finish_reason is not None:
                    self.finish_reason = delta.finish_reason
                    return
        finally:
            if self.finish_reason is None:
                self.cancel()

    async def collect(self) -> str:
        """The whole completion text (cancels the request if the caller is cancelled)."""
        async for _ in self:
            pass
        return self.text
