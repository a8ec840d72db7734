"""The door of the API: shutdown, API key, rate limit — checked before a request body is read.

A pure ASGI middleware rather than a FastAPI dependency on purpose: FastAPI reads and parses the
JSON body *before* it runs a route's dependencies, so an unauthenticated client could make the
server parse a megabyte of JSON and would get 422 instead of 401. Here the order is:

1. ``/v1/*`` while shutting down → 503 ``server_shutting_down`` (+ ``Connection: close``), so the
   client retries on another replica;
2. ``/v1/*`` (and ``/metrics`` when ``metrics_require_auth``) without a valid key → 401
   ``invalid_api_key``; the key is never echoed or logged;
3. ``/v1/*`` over the global or the key's token bucket → 429 ``rate_limit_exceeded`` + ``Retry-After``;
4. otherwise the request runs, counted in :class:`~autoglm_runtime.admission.InFlight` until its
   last byte (streams included) so shutdown can wait for it.

``/healthz`` and ``/readyz`` are never guarded: kubelet probes carry no key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from autoglm_runtime.admission import AdmissionError, InFlight, RateLimiter
from autoglm_runtime.auth import ApiKeys, presented_key
from autoglm_runtime.errors import OpenAIError, RetryableError
from autoglm_runtime.serving.errors import error_response
from autoglm_runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

API_PREFIX = "/v1"


@dataclass
class GuardState:
    """What the guard consults; built once per app from the settings."""

    keys: ApiKeys | None = None
    limiter: RateLimiter = field(default_factory=RateLimiter)
    in_flight: InFlight = field(default_factory=InFlight)
    protect_metrics: bool = False

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> GuardState:
        return cls(
            keys=ApiKeys(settings.api_keys_file) if settings.api_keys_file is not None else None,
            limiter=RateLimiter(
                settings.rate_limit_rps,
                settings.rate_limit_burst,
                settings.rate_limit_per_key_rps,
                settings.rate_limit_burst,
            ),
            protect_metrics=settings.metrics_require_auth,
        )

    @property
    def draining(self) -> bool:
        return self.in_flight.closed

    def start_draining(self) -> None:
        """SIGTERM: /readyz turns 503 and new API requests get 503; running ones finish."""
        self.in_flight.close()


def _is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


class Guard:
    def __init__(self, app: ASGIApp, state: GuardState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = _is_api(path)
        if not api and not (self.state.protect_metrics and path == "/metrics"):
            await self.app(scope, receive, send)
            return
        state = self.state
        if api and state.draining:
            response = error_response(
                RetryableError(
                    "Server is shutting down; retry the request (another replica will take it)",
                    1.0,
                    code="server_shutting_down",
                    headers={"Connection": "close"},
                )
            )
            await response(scope, receive, send)
            return
        ident: str | None = None
        if state.keys is not None:
            headers = {k.lower(): v for k, v in scope["headers"]}
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            x_api_key = headers.get(b"x-api-key", b"").decode("latin-1") or None
            presented = presented_key(authorization, x_api_key)
            ident = state.keys.verify(presented)
            if ident is None:
                message = (
                    "Missing API key: send it as 'Authorization: Bearer <key>'"
                    if presented is None
                    else "Incorrect API key provided"
                )
                log.debug(
                    "Refused %s %s: %s",
                    scope.get("method"),
                    path,
                    "no key" if presented is None else "bad key",
                )
                response = error_response(
                    OpenAIError(
                        message, status=401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
                    )
                )
                await response(scope, receive, send)
                return
        if api:
            try:
                state.limiter.check(ident)
                state.in_flight.enter()
            except AdmissionError as exc:
                await error_response(exc)(scope, receive, send)
                return
            scope.setdefault("state", {})["api_key_id"] = ident
            try:
                await self.app(scope, receive, send)
            finally:
                state.in_flight.leave()
            return
        await self.app(scope, receive, send)
