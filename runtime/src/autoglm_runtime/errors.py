"""What a client is told when the server refuses a request: one exception type for OpenAI's error
shape, one for refusals worth retrying, and the one rule for ``Retry-After``.

No web framework here: the engine's callers (:mod:`.chat`, :mod:`.vision`, :mod:`.admission`) raise
these, and the HTTP layer (:mod:`.serving.errors`) turns them into responses.
"""

from __future__ import annotations

import math
from typing import Any

from autoglm_runtime.schemas import ErrorResponse


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds: rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


class OpenAIError(Exception):
    """An error for the client: HTTP ``status``, and OpenAI's ``{"error": {message, type, param,
    code}}``. Subclasses only set defaults for where they come from."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param = message, param
        if status is not None:
            self.status = status
        if type_ is not None:
            self.type = type_
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return ErrorResponse.of(self.message, self.type, self.param, self.code)


class RetryableError(OpenAIError):
    """A refusal that will likely succeed later (429/503): ``Retry-After`` says when."""

    status = 503
    type = "service_unavailable"

    def __init__(
        self,
        message: str,
        retry_after: float,
        *,
        status: int | None = None,
        type_: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.retry_after = retry_after
        headers = {"Retry-After": retry_after_header(retry_after), **(headers or {})}
        super().__init__(message, status=status, type_=type_, code=code, headers=headers)
