"""Errors as the client sees them: the engine's typed errors mapped to HTTP, and the app's handlers
so that everything (validation, 404s, bugs) answers in OpenAI's error shape, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autoglm_runtime.engine import (
    EngineError,
    EngineNotReadyError,
    GenerationFailedError,
    InvalidRequestError,
    ModelUnavailableError,
    PromptTooLongError,
    QueueFullError,
    RequestTimeoutError,
)
from autoglm_runtime.errors import OpenAIError, RetryableError

log = logging.getLogger(__name__)

NOT_READY_RETRY_S = 5.0  # a loading model: come back in a few seconds


def error_response(err: OpenAIError) -> JSONResponse:
    """``err`` in OpenAI's error shape, with its status and headers."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def engine_error(exc: EngineError, param: str | None = None) -> OpenAIError:
    """The client's view of an engine error (``param``: the request part it concerns)."""
    if isinstance(exc, QueueFullError):
        return RetryableError(
            str(exc), exc.retry_after_s, status=429, type_="rate_limit_error", code="queue_full"
        )
    if isinstance(exc, PromptTooLongError):
        return OpenAIError(str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return OpenAIError(str(exc), param=param)
    if isinstance(exc, EngineNotReadyError):
        return RetryableError(str(exc), NOT_READY_RETRY_S, code="not_ready")
    if isinstance(exc, RequestTimeoutError):
        return OpenAIError(str(exc), status=504, type_="timeout", code="timeout")
    if isinstance(exc, ModelUnavailableError):
        return RetryableError(str(exc), exc.retry_after_s, code="model_unavailable")
    if isinstance(exc, GenerationFailedError):
        return RetryableError(str(exc), 1.0, type_="server_error", code="generation_failed")
    return internal_error()


def internal_error() -> OpenAIError:
    return OpenAIError("internal error", status=500, type_="server_error")


def unavailable(message: str, code: str) -> OpenAIError:
    """503 without ``Retry-After`` (readiness: the kubelet polls anyway)."""
    return OpenAIError(message, status=503, type_="service_unavailable", code=code)


def _validation_param(errors: Sequence[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return (f"{param}: {message}" if param else message), param


async def _openai_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return error_response(exc)


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return error_response(OpenAIError("request body is not valid JSON", code="invalid_json"))
    message, param = _validation_param(errors)
    return error_response(OpenAIError(message, status=422, param=param, code="invalid_value"))


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    headers = dict(exc.headers or {})
    return error_response(OpenAIError(str(exc.detail), status=exc.status_code, type_=type_, headers=headers))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("Unhandled error: %s", exc, exc_info=exc)
    return error_response(internal_error())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
