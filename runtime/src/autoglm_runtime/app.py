"""The HTTP layer: a FastAPI app over an :class:`~autoglm_runtime.engine.Engine`. Routes stay thin.

The parts live in :mod:`autoglm_runtime.serving` (routes, one serving unit per API, errors,
middleware). Every error a client can cause gets the OpenAI error shape
``{"error": {message, type, param, code}}`` and a 4xx status; nothing reaches the client as a
traceback.

Hardening lives around the routes, not in them:
- API keys, rate limits and shutdown draining: the :class:`~autoglm_runtime.guard.Guard` middleware
  (before the body is read; /healthz, /readyz stay open, /metrics optionally guarded);
- model failures and the circuit breaker: in the engine (503 ``generation_failed`` /
  ``model_unavailable``); /readyz is 503 while the breaker is open or the server drains;
- TLS and SIGTERM handling: :mod:`autoglm_runtime.serve`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.params import Depends

from autoglm_runtime.engine import Engine
from autoglm_runtime.guard import Guard, GuardState
from autoglm_runtime.metrics import RuntimeMetrics
from autoglm_runtime.serving.chat import ChatServing
from autoglm_runtime.serving.completions import CompletionServing
from autoglm_runtime.serving.errors import install_error_handlers
from autoglm_runtime.serving.middleware import BodySizeLimit, RequestMetrics
from autoglm_runtime.serving.models import ModelServing
from autoglm_runtime.serving.routes import api_router, probe_router
from autoglm_runtime.settings import RuntimeSettings


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
    models = ModelServing.from_settings(settings)

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
    install_error_handlers(app)
    app.include_router(probe_router(engine, guard, metrics, models.name))
    completions = CompletionServing(engine, settings, metrics, models)
    chat = ChatServing(engine, settings, metrics, models)
    app.include_router(api_router(models, completions, chat, api_dependencies))
    # Added innermost first. The size limit runs before anything reads the body; metrics see every
    # response the guard gives (401/429/503); the guard runs before FastAPI parses the body.
    app.add_middleware(Guard, state=guard)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    return app
