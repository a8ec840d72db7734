"""The HTTP layer: a FastAPI app over an :class:`~autoglm_runtime.engine.Engine`. Routes stay thin.

Every error a client can cause gets the OpenAI error shape ``{"error": {message, type, param, code}}``
and a 4xx status; nothing reaches the client as a traceback.

Hardening lives around the routes, not in them:
- API keys, rate limits and shutdown draining: the :class:`~autoglm_runtime.guard.Guard` middleware
  (before the body is read; /healthz, /readyz stay open, /metrics optionally guarded);
- model failures and the circuit breaker: in the engine (503 ``generation_failed`` /
  ``model_unavailable``); /readyz is 503 while the breaker is open or the server drains;
- TLS and SIGTERM handling: :mod:`autoglm_runtime.serve`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autoglm_runtime.chat import ContentError, ImageRef, split_messages
from autoglm_runtime.engine import (
    Engine,
    EngineError,
    EngineNotReadyError,
    GenerationFailedError,
    InvalidRequestError,
    ModelUnavailableError,
    PromptTooLongError,
    QueueFullError,
    RequestHandle,
    RequestTimeoutError,
    SamplingParams,
)
from autoglm_runtime.guard import Guard, GuardState
from autoglm_runtime.loader import served_name
from autoglm_runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from autoglm_runtime.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    new_id,
    now,
)
from autoglm_runtime.settings import RuntimeSettings
from autoglm_runtime.vision import ImageInputError, RemoteImages, decode_image_url

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error for the client: status, OpenAI error type/param/code, optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = ErrorResponse.of(self.message, self.type, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def engine_error(exc: EngineError, param: str | None = None) -> APIError:
    """Map the engine's typed errors to HTTP."""
    if isinstance(exc, QueueFullError):
        retry = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return APIError(429, str(exc), "rate_limit_error", None, "queue_full", retry)
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), param=param)
    if isinstance(exc, EngineNotReadyError):
        return APIError(503, str(exc), "service_unavailable", code="not_ready", headers={"Retry-After": "5"})
    if isinstance(exc, RequestTimeoutError):
        return APIError(504, str(exc), "timeout", code="timeout")
    if isinstance(exc, ModelUnavailableError):
        retry = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        return APIError(503, str(exc), "service_unavailable", code="model_unavailable", headers=retry)
    if isinstance(exc, GenerationFailedError):
        return APIError(503, str(exc), "server_error", code="generation_failed", headers={"Retry-After": "1"})
    return APIError(500, "internal error", "server_error")


def _validation_param(errors: Sequence[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return (f"{param}: {message}" if param else message), param


class BodySizeLimit:
    """Reject request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = APIError(413, f"request body exceeds {self.limit} bytes", code="body_too_large").response()
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_big(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await too_big(scope, receive, send)


class _BodyTooLargeError(Exception):
    pass


class RequestMetrics:
    """Counts requests by route template and status; times them until the last byte is sent."""

    def __init__(self, app: ASGIApp, metrics: RuntimeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)


def create_app(
    settings: RuntimeSettings,
    engine: Engine,
    *,
    metrics: RuntimeMetrics | None = None,
    api_dependencies: Sequence[Depends] = (),
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    guard: GuardState | None = None,
) -> FastAPI:
    """The runtime's app. ``engine`` may still be loading: /healthz answers, /readyz says 503.

    ``guard`` (API keys, rate limits, draining) is built from ``settings`` unless given; ``serve``
    passes its own so SIGTERM can start the drain.
    """
    metrics = metrics or RuntimeMetrics()
    guard = guard or GuardState.from_settings(settings)
    metrics.bind_engine(engine)
    model_name = served_name(settings)
    accepted_names = {model_name, settings.model}
    created = now()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(title="autoglm-runtime", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.guard = guard

    # --- errors: always the OpenAI shape -------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            return APIError(400, "request body is not valid JSON", code="invalid_json").response()
        message, param = _validation_param(errors)
        return APIError(422, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), type_, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("Unhandled error: %s", exc, exc_info=exc)
        return APIError(500, "internal error", "server_error").response()

    # --- probes and metrics --------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if guard.draining:
            return APIError(
                503, "shutting down", "service_unavailable", code="server_shutting_down"
            ).response()
        if engine.ready and engine.breaker.is_open:
            message = f"model keeps failing ({engine.breaker.last_error}); circuit breaker open"
            return APIError(503, message, "service_unavailable", code="model_unavailable").response()
        if engine.ready:
            return JSONResponse({"status": "ready", "model": model_name})
        if engine.load_error:
            return APIError(503, engine.load_error, "service_unavailable", code="load_failed").response()
        return APIError(503, "model is loading", "service_unavailable", code="not_ready").response()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # --- OpenAI API ----------------------------------------------------------------------------
    api = APIRouter(prefix="/v1", dependencies=list(api_dependencies))

    def check_model(name: str) -> None:
        if name not in accepted_names:
            raise APIError(
                404,
                f"model {name!r} does not exist; this server serves {model_name!r}",
                param="model",
                code="model_not_found",
            )

    def sampling(body: CompletionRequest | ChatCompletionRequest, limit: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=limit or settings.max_new_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop_list),
            seed=body.seed,
            min_tokens=body.min_tokens,
            frequency_penalty=body.frequency_penalty,
            presence_penalty=body.presence_penalty,
        )

    async def submit(
        prompt: str | list[int], params: SamplingParams, param: str, images: Any = None
    ) -> RequestHandle:
        try:
            return await engine.submit(prompt, params, images)
        except EngineError as exc:
            raise engine_error(exc, param) from exc

    # Decoding and preprocessing screenshots is CPU work (~0.5 s each): off the event loop, a few
    # at a time, so /healthz and streams keep answering while a burst of images is decoded.
    image_slots = asyncio.Semaphore(settings.image_decode_concurrency)
    remote_images = RemoteImages.from_settings(settings)

    async def prepare_images(refs: list[ImageRef]) -> Any:
        vision = engine.vision
        if len(refs) > settings.max_images_per_request:
            raise APIError(
                400,
                f"{len(refs)} images in one request; this server accepts at most {settings.max_images_per_request}",
                param=refs[settings.max_images_per_request].param,
                code="too_many_images",
            )

        async def decode(ref: ImageRef) -> Any:
            async with image_slots:
                return await asyncio.to_thread(
                    decode_image_url, ref.url, ref.param, settings.max_decoded_pixels, remote_images
                )

        try:
            decoded = await asyncio.gather(*(decode(ref) for ref in refs))
            async with image_slots:
                return await asyncio.to_thread(vision.prepare, list(decoded), [r.param for r in refs])
        except ImageInputError as exc:
            raise APIError(exc.status, exc.message, param=exc.param, code=exc.code) from None

    def record(handle: RequestHandle) -> None:
        metrics.prompt_tokens.inc(handle.prompt_tokens)
        metrics.generated_tokens.inc(handle.completion_tokens)
        if handle.time_to_first_token is not None:
            metrics.time_to_first_token.observe(handle.time_to_first_token)

    async def collect(request: Request, handle: RequestHandle) -> str:
        """The full text; cancels generation if the client goes away first."""
        task = asyncio.ensure_future(handle.collect())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.5)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    handle.cancel()
                    task.cancel()
                    raise APIError(499, "client disconnected", code="client_closed")
        except EngineError as exc:
            raise engine_error(exc) from exc
        finally:
            if not task.done():
                task.cancel()
            record(handle)

    def sse(payload: dict[str, Any] | str) -> str:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        return f"data: {data}\n\n"

    async def stream(
        handle: RequestHandle,
        chunk: Callable[[str | None, str | None], dict[str, Any]],
        usage_chunk: bool,
        final: Callable[[Usage], dict[str, Any]],
    ) -> AsyncIterator[str]:
        try:
            async for text in handle:
                yield sse(chunk(text, None))
            yield sse(chunk(None, handle.finish_reason))
            if usage_chunk:
                yield sse(final(Usage.of(handle.prompt_tokens, handle.completion_tokens)))
        except EngineError as exc:
            err = engine_error(exc)
            yield sse(ErrorResponse.of(err.message, err.type, err.param, err.code))
        finally:
            handle.cancel()  # a no-op when finished; frees the batch slot when the client left
            record(handle)
        yield sse("[DONE]")

    @api.get("/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=created)])

    @api.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Completion | StreamingResponse:
        check_model(body.model)
        handle = await submit(body.prompt, sampling(body, body.max_tokens), "prompt")  # type: ignore[arg-type]
        rid, ts = new_id("cmpl"), now()
        if body.stream:

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                choice = CompletionChoice(text=text or "", finish_reason=finish)
                return Completion(id=rid, created=ts, model=model_name, choices=[choice]).model_dump()

            def final(usage: Usage) -> dict[str, Any]:
                return Completion(id=rid, created=ts, model=model_name, choices=[], usage=usage).model_dump()

            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(handle, chunk, include, final), media_type="text/event-stream")
        text = await collect(request, handle)
        if body.echo and isinstance(body.prompt, str):
            text = body.prompt + text
        return Completion(
            id=rid,
            created=ts,
            model=model_name,
            choices=[CompletionChoice(text=text, finish_reason=handle.finish_reason)],
            usage=Usage.of(handle.prompt_tokens, handle.completion_tokens),
        )

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> ChatCompletion | StreamingResponse:
        check_model(body.model)
        if not engine.ready:
            raise engine_error(EngineNotReadyError("the model is still loading"), "messages")
        try:
            messages, refs = split_messages(
                body.messages, vision=engine.vision is not None, model_name=model_name
            )
        except ContentError as exc:
            raise APIError(400, exc.message, param=exc.param, code=exc.code) from None
        images = await prepare_images(refs) if refs else None
        try:
            prompt_ids = await asyncio.to_thread(engine.chat_prompt, messages, images)
        except EngineError as exc:
            raise engine_error(exc, "messages") from exc
        except Exception as exc:  # a template that rejects these messages (e.g. role order)
            raise APIError(
                400, f"messages do not fit the model's chat template: {exc}", param="messages"
            ) from exc
        handle = await submit(prompt_ids, sampling(body, body.token_limit), "messages", images)
        rid, ts = new_id("chatcmpl"), now()
        if body.stream:
            first = True

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                nonlocal first
                delta = ChatDelta(role="assistant" if first else None, content=text)
                first = False
                choice = ChatChunkChoice(delta=delta, finish_reason=finish)
                return ChatCompletionChunk(id=rid, created=ts, model=model_name, choices=[choice]).model_dump(
                    exclude_none=True
                )

            def final(usage: Usage) -> dict[str, Any]:
                return ChatCompletionChunk(
                    id=rid, created=ts, model=model_name, choices=[], usage=usage
                ).model_dump()

            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(handle, chunk, include, final), media_type="text/event-stream")
        text = await collect(request, handle)
        return ChatCompletion(
            id=rid,
            created=ts,
            model=model_name,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=handle.finish_reason)],
            usage=Usage.of(handle.prompt_tokens, handle.completion_tokens),
        )

    app.include_router(api)
    # Added innermost first. The size limit runs before anything reads the body; metrics see every
    # response the guard gives (401/429/503); the guard runs before FastAPI parses the body.
    app.add_middleware(Guard, state=guard)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    return app
