"""RFC 9457 problem details for every error the API returns.

Handlers turn HTTP errors, request-validation errors, `KdauditError`s and unexpected
exceptions into `application/problem+json`; nothing a client sees carries a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kdaudit.core.errors import KdauditError

log = logging.getLogger("kdaudit.api")

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title or _TITLES.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:kdaudit:problem:{slug}" if slug else "about:blank",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = printable(detail)
    body["instance"] = printable(request.url.path)
    body.update(extra)
    rid = request_id_of(request)
    if rid:
        body["request_id"] = rid
        headers = {**(headers or {}), "X-Request-ID": rid}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F]}


def printable(text: str) -> str:
    """`text` with control characters (NUL, ESC, ...; not tab or newline) written as \\xNN: a
    client-chosen value quoted in an error is never echoed raw into the body or the logs."""
    return text.translate(_CONTROL)


def request_id_of(request: Request) -> str | None:
    """The id the request-id middleware gave this request (None outside it)."""
    return (request.scope.get("state") or {}).get("request_id")


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            request, exc.status, exc.detail, slug=exc.slug, title=exc.title, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        return problem_response(request, exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(
            request, 422, f"invalid request: {summary}", slug="validation-error", title="Invalid request", errors=errors
        )

    @app.exception_handler(KdauditError)
    async def _kdaudit(request: Request, exc: KdauditError) -> JSONResponse:
        return problem_response(request, 422, f"{exc.context}: {exc}", slug="invalid-input")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id_of(request)
        log.exception("unhandled error on %s %s [request_id=%s]", request.method, request.url.path, rid)
        detail = "internal error; the server log has the details" + (f" (request id {rid})" if rid else "")
        return problem_response(request, 500, detail, slug="internal")
