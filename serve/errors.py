"""Errors in OpenAI's shape: `{"error": {"message", "type", "code", "param"}}` with the
status a client's SDK maps to the right exception. Every message is redacted, and no
handler echoes a request's values (a key pasted into the wrong field stays unseen).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from emafusion.stores.redaction import redact

logger = logging.getLogger("emafusion.serve")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
UPSTREAM = "upstream_error"
SERVER = "server_error"
MAX_LISTED_PROBLEMS = 5


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """An error reply: HTTP status, OpenAI error type and code, and what to do about it."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": redact(self.message),
            "type": self.type,
            "code": self.code,
            "param": self.param,
        }
        error.update(self.extra)
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _location(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def validation_error(errors: Sequence[Mapping[str, Any]]) -> APIError:
    """One 400 naming every bad field (its location and the rule), never its value."""
    problems = []
    param: str | None = None
    for error in errors[:MAX_LISTED_PROBLEMS]:
        where = _location(error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            where, message = "body", "not valid JSON"
        param = param or where
        problems.append(f"{where}: {message}")
    more = len(errors) - MAX_LISTED_PROBLEMS
    if more > 0:
        problems.append(f"and {more} more")
    return APIError(
        400, "invalid request: " + "; ".join(problems), code="invalid_request", param=param
    )


_STATUS_CODES = {
    404: ("not_found", INVALID_REQUEST),
    405: ("method_not_allowed", INVALID_REQUEST),
    413: ("request_too_large", INVALID_REQUEST),
}


def install_error_handlers(app: FastAPI, count: Callable[[APIError], None]) -> None:
    """Every error becomes OpenAI's shape; `count` sees each one (for the metrics)."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        count(exc)
        return exc.response()

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = validation_error(list(exc.errors()))
        count(error)
        return error.response()

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code, type_ = _STATUS_CODES.get(exc.status_code, ("http_error", INVALID_REQUEST))
        message = f"{request.method} {request.url.path}: {exc.detail}"
        error = APIError(exc.status_code, message, type_, code, headers=dict(exc.headers or {}))
        count(error)
        return error.response()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log (redacted), the client gets no internals.
        logger.error(
            "internal error on %s %s: %s",
            request.method,
            request.url.path,
            redact(repr(exc)),
            exc_info=False,
        )
        error = APIError(
            500, "internal server error (logged on the server)", SERVER, "internal_error"
        )
        count(error)
        return error.response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
