"""HTTP errors in the OpenAI error shape, and the FastAPI handlers that produce them.

Every 4xx/5xx the server sends (its own, the engine's typed errors, FastAPI's validation, 404 and
405, malformed JSON) carries `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from omega_server.engine.errors import (
    EngineDeadError,
    EngineError,
    InvalidRequestError,
    OutOfMemoryError,
    PromptTooLongError,
    QueueFullError,
)
from omega_server.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger("omega_server.errors")

RETRY_AFTER_SECONDS = 1

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error to answer with; `status` is the HTTP status code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_type(status: int) -> str:
    """The OpenAI `type` string for an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error body as a dict."""
    info = ErrorInfo(message=message, type=error_type(status), param=param, code=code)
    return ErrorResponse(error=info).model_dump()


def error_response(err: APIError) -> JSONResponse:
    """A JSON response for an `APIError`."""
    return JSONResponse(
        error_body(err.status, err.message, err.param, err.code), status_code=err.status, headers=err.headers
    )


def from_engine_error(exc: EngineError) -> APIError:
    """Map the engine's typed errors to HTTP: overload 429, out of memory 503 + Retry-After, dead 503,
    bad request/too long 400."""
    message = getattr(exc, "message", None) or str(exc)
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None)
    if isinstance(exc, QueueFullError):
        retry_after = max(1, math.ceil(getattr(exc, "retry_after", RETRY_AFTER_SECONDS)))
        return APIError(
            429,
            message,
            param=param,
            code=code or "queue_full",
            headers={"Retry-After": str(retry_after)},
        )
    if isinstance(exc, OutOfMemoryError):
        retry_after = max(1, math.ceil(exc.retry_after))
        return APIError(
            503, message, param=param, code=code or "out_of_memory", headers={"Retry-After": str(retry_after)}
        )
    if isinstance(exc, EngineDeadError):
        return APIError(503, message, param=param, code=code or "engine_dead")
    if isinstance(exc, PromptTooLongError):
        return APIError(400, message, param=param or "messages", code=code or "context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return APIError(400, message, param=param, code=code)
    # Anything else (a failed forward pass) is the server's fault, not the request's.
    return APIError(500, message, param=param, code=code or "generation_failed")


_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none|.*\[.*\])$")


def _loc_to_param(loc: Sequence[Any]) -> str:
    """`("body", "messages", 0, "role")` -> `messages.0.role`.

    The body prefix and pydantic's union-branch markers (`str`, `list[...]`) are dropped.
    """
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and _UNION_BRANCH.match(p))]
    return ".".join(parts)


def _most_telling(errors: Sequence[Any]) -> Any:
    """Of several errors (one per union branch), the one a user should read first."""
    for kind in ("json_invalid", "union_tag_invalid", "union_tag_not_found"):
        for err in errors:
            if err.get("type") == kind:
                return err
    # For "str or list of parts" content, prefer the list branch's complaint over "not a string".
    for err in errors:
        if not any(isinstance(p, str) and p.startswith("list[") for p in err.get("loc", ())):
            continue
        return err
    return errors[0]


def describe_validation_error(errors: Sequence[Any]) -> tuple[str, str | None]:
    """A one-line message and the `param` for FastAPI/pydantic validation errors."""
    if not errors:
        return "Invalid request body.", None
    first = _most_telling(errors)
    kind = first.get("type", "")
    loc = list(first.get("loc", ()))
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return f"Malformed JSON body: {detail}".rstrip(": "), None
    if kind == "missing" and loc in (["body"], []):
        return "Request body is required (a JSON object).", None
    if kind == "model_attributes_type" and loc == ["body"]:
        return "Request body must be a JSON object.", None
    param = _loc_to_param(loc) or None
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        return (
            f"Unsupported content part type {tag!r} at {param}; supported types: 'text', 'image_url'.",
            param,
        )
    if kind == "union_tag_not_found":
        return f"Content part at {param} has no 'type'; supported types: 'text', 'image_url'.", param
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    return f"Invalid request: {where}{msg}{more}.", param


#: ASGI scope key where the error handlers leave the answer's error code (the middleware counts
#: refusals by it: ``metrics.rejection_reason``)
ERROR_CODE = "omega.error_code"


def _answer(request: Request, err: APIError) -> JSONResponse:
    request.scope[ERROR_CODE] = err.code
    return error_response(err)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error response the OpenAI body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return _answer(request, from_engine_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc.errors())
        return _answer(request, APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "Not found: no such route."
        elif exc.status_code == 405:
            message = "Method not allowed on this route."
        return error_response(APIError(exc.status_code, message, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError(500, f"Internal server error: {type(exc).__name__}"))
