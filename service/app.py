"""FastAPI application factory.

    create_app()            # settings from KDAUDIT_* env vars (embedded SQLite by default)
    create_app(settings)    # explicit settings (tests, `kdaudit serve`)

The app enqueues audits by task name through a Celery producer and never imports the
task code or loads a checkpoint: files are validated in a separate process.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders

import kdaudit
from kdaudit.core.settings import Settings
from kdaudit.service import hardening, problems, web
from kdaudit.service import metrics as metrics_mod
from kdaudit.service.deps import reject_unknown_query
from kdaudit.service.limits import BodySizeLimit, make_rate_limiter
from kdaudit.service.problems import PROBLEM_JSON, problem_response
from kdaudit.service.routers import ROUTERS
from kdaudit.store import db, migrate
from kdaudit.store.files import FileStore
from kdaudit.store.settings import coerce_settings
from kdaudit.workers.app import broker_reachable, make_celery
from kdaudit.workers.sweep import sweep_once

log = logging.getLogger("kdaudit.api")
access_log = logging.getLogger("kdaudit.access")

# ------------------------------------------------------------------------------- request ids

#: the current request's id, for log records (`%(request_id)s` in any log format)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("kdaudit_request_id", default="-")
_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _install_log_record_factory() -> None:
    """Give every log record a `request_id` attribute (once per process)."""
    old = logging.getLogRecordFactory()
    if getattr(old, "_kdaudit", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    factory._kdaudit = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_RID_PREFIX = uuid.uuid4().hex[:16]
_rid_counter = itertools.count(1)


def _new_request_id() -> str:
    """Unique per process start (a random prefix) and per request (a counter): no system call
    for randomness on every request (uuid4 was a measurable share of a status poll's CPU)."""
    return f"{_RID_PREFIX}{next(_rid_counter):016x}"


class RequestIdMiddleware:
    """Pure ASGI: take a well-formed `X-Request-ID` from the client or make one, echo it on
    the response, expose it to handlers (`scope['state']['request_id']`, problem bodies) and
    to logs (`request_id_var`), and write one access-log line per request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", []) if k == b"x-request-id"), b"")
        try:
            rid = given.decode("ascii") if given else ""
        except UnicodeDecodeError:
            rid = ""
        if not _VALID_RID.match(rid):
            rid = _new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request_id=%s %s %s %d %.1fms",
                    rid, scope["method"], scope["path"], status, (time.perf_counter() - start) * 1000,
                )  # fmt: skip
            request_id_var.reset(token)


def _problem_openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI with every 4xx/5xx answer documented as `application/problem+json` (ProblemDoc)."""
    if app.openapi_schema:
        return app.openapi_schema
    from kdaudit.service.schemas import ProblemDoc

    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ProblemDoc"] = ProblemDoc.model_json_schema(ref_template="#/components/schemas/{model}")
    ref = {"$ref": "#/components/schemas/ProblemDoc"}
    #: answered by the /v1 dependencies (auth, rate limit, strict query) on every /v1 operation,
    #: whichever router declares it
    v1_common = {
        "401": "Missing or invalid API key",
        "422": "Invalid request",
        "429": "Rate limit exceeded (`limit` names it)",
    }
    for path, item in spec.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if path.startswith("/v1/"):
                for code, description in v1_common.items():
                    op["responses"].setdefault(code, {"description": description})
                    if not op["responses"][code].get("description"):
                        op["responses"][code]["description"] = description
            for code, resp in op["responses"].items():
                if str(code)[:1] in ("4", "5"):
                    resp["content"] = {PROBLEM_JSON: {"schema": ref}}
                    if code == "429" or code == "503":
                        resp.setdefault("headers", {})["Retry-After"] = {
                            "schema": {"type": "string"},
                            "description": "Seconds to wait (sent with most 429/503 answers).",
                        }
    for name in ("HTTPValidationError", "ValidationError"):
        if not any(name in str(p) for p in spec.get("paths", {}).values()):
            schemas.pop(name, None)
    app.openapi_schema = spec
    return spec

DESCRIPTION = """Audit how much a classifier leaks to knowledge-distillation attackers.

Flow: `POST /v1/teachers` (multipart) -> `POST /v1/audits` (202 + Location) ->
poll `GET /v1/audits/{id}` until `succeeded` -> `GET /v1/audits/{id}/report`.
Every /v1 route needs `Authorization: Bearer <api key>`. Errors are RFC 9457 problem+json.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    s = coerce_settings(settings)

    _install_log_record_factory()

    async def sweeper(app: FastAPI) -> None:
        """Requeue audits whose worker vanished, even when no worker is looking (see workers/sweep.py)."""
        while True:
            await asyncio.sleep(s.sweep_interval)
            try:
                await run_in_threadpool(sweep_once, app.state.celery, s)
            except Exception as e:  # a DB/broker blip: try again next round
                log.warning("orphan sweep failed (%s: %s)", type(e).__name__, e)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if s.should_auto_migrate:
            await run_in_threadpool(migrate.upgrade, s.resolved_database_url)
        s.resolved_storage_dir.mkdir(parents=True, exist_ok=True)
        task = asyncio.create_task(sweeper(app)) if s.sweep_in_api else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    app = FastAPI(
        title="kdaudit",
        version=kdaudit.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,  # the CDN-loading defaults are off; service/hardening.py serves /docs locally
        redoc_url=None,
    )
    app.state.settings = s
    app.state.sessions = db.session_factory(s.resolved_database_url)
    app.state.read_engine = db.read_engine(s.resolved_database_url)  # the status poll's one SELECT
    app.state.celery = make_celery(s)
    app.state.files = FileStore(s.resolved_storage_dir)
    app.state.rate_limiter = make_rate_limiter(s)
    hardening.install(app, s)  # key cache, lookup buckets, loader gate, security headers, /docs
    problems.install(app)
    app.state.metrics = metrics_mod.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=s.max_json_body_bytes)
    app.add_middleware(RequestIdMiddleware)  # added last = outermost of the user middleware
    app.openapi = lambda: _problem_openapi(app)  # type: ignore[method-assign]
    for router in ROUTERS:  # the /v1 API, one router per resource (service/routers/)
        app.include_router(router)
    app.include_router(web.router)

    strict = [Depends(reject_unknown_query)]

    @app.get("/healthz", tags=["health"], dependencies=strict, responses={422: {"description": "Unknown query parameter"}})
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        dependencies=strict,
        responses={422: {"description": "Unknown query parameter"}, 503: {"description": "Database or broker not ready"}},
    )
    def readyz(request: Request) -> JSONResponse:
        """Readiness: the database (migrated to head) and the broker are reachable."""
        checks: dict[str, str] = {}
        try:
            db.ping(s.resolved_database_url)
            current, head = migrate.current_revision(s.resolved_database_url), migrate.head_revision()
            checks["database"] = "ok" if current == head else f"schema at {current}, expected {head}"
        except Exception as e:
            checks["database"] = f"unreachable ({type(e).__name__})"
        try:
            broker_reachable(app.state.celery)
            checks["broker"] = "ok"
        except Exception as e:
            checks["broker"] = f"unreachable ({type(e).__name__})"
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        return problem_response(request, 503, f"not ready: {failing}", slug="not-ready", checks=checks)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        dependencies=strict,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
            422: {"description": "Unknown query parameter"},
        },
    )
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(app.state.metrics.scrape), media_type=CONTENT_TYPE_LATEST)

    return app
