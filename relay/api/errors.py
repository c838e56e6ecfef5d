"""API errors: one exception that handlers raise, rendered by the error middleware as
``{"error": {"code", "message", "details"}}`` (design section 6)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic
from aiohttp import web

from relay.models.connection import TestResult

M = TypeVar("M", bound=pydantic.BaseModel)

# Bodies larger than this are refused before parsing (aiohttp's own limit is 1 MiB too).
MAX_JSON_BODY = 1024 * 1024


class ApiError(Exception):
    """An error answer: HTTP ``status``, a stable machine ``code``, a human ``message``,
    and ``details`` (for validation errors: ``{"field": "http.base_uri", "message"}``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("http", "headers", 0, "name")`` -> ``"http.headers.0.name"``; model-level
    errors (empty location) name the body itself."""
    return ".".join(str(p) for p in loc) if loc else "body"


def validation_details(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        # Union members and tagged models add their class name to the location.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        message = err["msg"].removeprefix("Value error, ")
        details.append({"field": field_path(loc), "message": message})
    return details


def invalid_request(exc: pydantic.ValidationError) -> ApiError:
    details = validation_details(exc)
    fields = ", ".join(dict.fromkeys(d["field"] for d in details))
    return ApiError(400, "invalid_request", f"invalid request: {fields}", details)


def invalid_field(field: str, message: str) -> ApiError:
    return ApiError(
        400,
        "invalid_request",
        f"invalid request: {field}",
        [{"field": field, "message": message}],
    )


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; ApiError(400) when it is missing or not JSON."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, "payload_too_large", f"the body is larger than {MAX_JSON_BODY} bytes")
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request needs a JSON body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


async def read_json_model(request: web.Request, model: type[M]) -> M:
    """The request body validated as ``model``; ApiError(400) naming every bad field."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "invalid_request",
            "the body must be a JSON object",
            [{"field": "body", "message": "must be a JSON object"}],
        )
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise invalid_request(exc) from None


# HTTP statuses without a handler-chosen code (router 404, 405, 413 from aiohttp).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


def http_code(status: int) -> str:
    return _HTTP_CODES.get(status, "client_error" if status < 500 else "server_error")


class TestFailedError(ApiError):
    """422 from Save & continue: the body also carries the test result."""

    __test__ = False  # not a pytest class

    def __init__(self, result: TestResult) -> None:
        reason = result.error.message if result.error is not None else "the test did not pass"
        super().__init__(422, "test_failed", f"the connection test failed: {reason}")
        self.result = result

    def body(self) -> dict[str, Any]:
        return {**super().body(), "test": self.result.model_dump(mode="json")}
