"""The routes: parse the request, hand it to its serving unit, wrap a stream. Nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autoglm_runtime.engine import Engine
from autoglm_runtime.guard import GuardState
from autoglm_runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from autoglm_runtime.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelList,
)
from autoglm_runtime.serving.chat import ChatServing
from autoglm_runtime.serving.completions import CompletionServing
from autoglm_runtime.serving.errors import error_response, unavailable
from autoglm_runtime.serving.models import ModelServing


def _respond(
    result: Completion | ChatCompletion | AsyncIterator[str],
) -> Completion | ChatCompletion | StreamingResponse:
    if isinstance(result, Completion | ChatCompletion):
        return result
    return StreamingResponse(result, media_type="text/event-stream")


def api_router(
    model_serving: ModelServing,
    completion_serving: CompletionServing,
    chat_serving: ChatServing,
    dependencies: Sequence[Depends] = (),
) -> APIRouter:
    """``/v1``: the OpenAI API."""
    api = APIRouter(prefix="/v1", dependencies=list(dependencies))

    @api.get("/models")
    async def models() -> ModelList:
        return model_serving.list()

    @api.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Completion | StreamingResponse:
        return _respond(await completion_serving.create(body, request.is_disconnected))  # type: ignore[return-value]

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> ChatCompletion | StreamingResponse:
        return _respond(await chat_serving.create(body, request.is_disconnected))  # type: ignore[return-value]

    return api


def probe_router(engine: Engine, guard: GuardState, metrics: RuntimeMetrics, model_name: str) -> APIRouter:
    """``/healthz`` (the process answers), ``/readyz`` (it serves), ``/metrics``."""
    probes = APIRouter()

    @probes.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @probes.get("/readyz")
    async def readyz() -> JSONResponse:
        if guard.draining:
            return error_response(unavailable("shutting down", "server_shutting_down"))
        if engine.ready and engine.breaker.is_open:
            message = f"model keeps failing ({engine.breaker.last_error}); circuit breaker open"
            return error_response(unavailable(message, "model_unavailable"))
        if engine.ready:
            return JSONResponse({"status": "ready", "model": model_name})
        if engine.load_error:
            return error_response(unavailable(engine.load_error, "load_failed"))
        return error_response(unavailable("model is loading", "not_ready"))

    @probes.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return probes
