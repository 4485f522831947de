"""FastAPI application factory.

    create_app()            # settings from KDAUDIT_* env vars (embedded SQLite by default)
    create_app(settings)    # explicit settings (tests, `kdaudit serve`)

The app enqueues audits by task name through a Celery producer and never imports the
task code or loads a checkpoint: files are validated in a separate process.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import kdaudit
from kdaudit.core.settings import Settings
from kdaudit.service import metrics as metrics_mod
from kdaudit.service import problems
from kdaudit.service.problems import problem_response
from kdaudit.service.routes import router
from kdaudit.store import db, migrate
from kdaudit.store.files import FileStore
from kdaudit.store.settings import coerce_settings
from kdaudit.workers.app import broker_reachable, make_celery

log = logging.getLogger("kdaudit.api")

DESCRIPTION = """Audit how much a classifier leaks to knowledge-distillation attackers.

Flow: `POST /v1/teachers` (multipart) -> `POST /v1/audits` (202 + Location) ->
poll `GET /v1/audits/{id}` until `succeeded` -> `GET /v1/audits/{id}/report`.
Every /v1 route needs `Authorization: Bearer <api key>`. Errors are RFC 9457 problem+json.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    s = coerce_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if s.should_auto_migrate:
            await run_in_threadpool(migrate.upgrade, s.resolved_database_url)
        s.resolved_storage_dir.mkdir(parents=True, exist_ok=True)
        yield

    app = FastAPI(
        title="kdaudit",
        version=kdaudit.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
    )
    app.state.settings = s
    app.state.sessions = db.session_factory(s.resolved_database_url)
    app.state.celery = make_celery(s)
    app.state.files = FileStore(s.resolved_storage_dir)
    problems.install(app)
    app.state.metrics = metrics_mod.install(app)
    app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
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

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
