"""The human side of the service: a small web UI and the HTML report.

    GET /                               the UI (sign in with an API key, upload a teacher,
                                        start an audit or a defence comparison, follow
                                        audits, open reports)
    GET /audits/{id}/report             UI page that shows one audit's HTML report
    GET /static/{name}                  the UI's CSS and JavaScript (no external assets)
    GET /v1/audits/{id}/report.html     the self-contained HTML report (Bearer key, like /v1;
                                        read like the JSON one: service/routers/reports.py)

The UI pages are server-rendered Jinja2 templates that hold no data: their JavaScript
calls the JSON API with the key the user typed in (kept in sessionStorage, so it goes
when the tab closes). The HTML report is rendered from the stored report JSON by
`kdaudit.reporting.html_page` (matplotlib, imported on first use), or, for a defence
comparison (schema kdaudit.defences/v1), by `kdaudit.reporting.defence_html`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

import kdaudit
from kdaudit.distill.attacks import attack_names, attack_spec
from kdaudit.distill.defences.registry import DEFAULT_DEFENCES
from kdaudit.service import trail
from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import get_session, get_settings
from kdaudit.service.problems import Problem
from kdaudit.service.routers.base import release_db
from kdaudit.service.routers.ownership import not_found
from kdaudit.service.routers.reports import report_body_or_409
from kdaudit.service.schemas import ID_PATTERN
from kdaudit.store.models import Tenant
from kdaudit.store.settings import ServiceSettings

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))

router = APIRouter()

#: the API's id pattern; documented without min/max length (as this route always was)
AuditId = Annotated[str, PathParam(description="Audit id (from POST /v1/audits).", pattern=ID_PATTERN)]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse")
#: the upload form's preprocessing presets (distill/preprocess.py), with what each means
PREPROCESS_CHOICES = (
    ("dataset", "the dataset's train mean/std (teachers kdaudit trained)"),
    ("none", "pixels in [0, 1], no mean/std"),
    ("pixels255", "pixels in [0, 255]"),
    ("half", "pixels in [-1, 1] (mean 0.5, std 0.5)"),
    ("imagenet", "ImageNet mean/std"),
    ("cifar", "canonical CIFAR-10 mean/std"),
    ("cifar-kuangliu", "CIFAR-10 std 0.2023/0.1994/0.2010 (kuangliu, Nasty-Teacher, Skeptical2021)"),
    ("cifar100", "canonical CIFAR-100 mean/std"),
    ("mnist", "MNIST 0.1307/0.3081"),
)
#: the attacks the upload form offers (those that need the thief's data), with the registry's labels
ATTACKS = tuple((name, attack_spec(name).label) for name in attack_names("data-available"))
ARCH_EXAMPLES = ("cnn-32-64-64-128", "cnn-16-32-32-64", "cnn-8-8-8-16", "cnn-4-8-8-16", "resnet18")

#: UI pages: scripts and styles only from this origin; the report iframe gets inline styles
UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
#: the report is self-contained: nothing may be fetched, nothing may run
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, {"version": kdaudit.__version__, **context})
    response.headers["Content-Security-Policy"] = UI_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def ui_index(request: Request) -> HTMLResponse:
    """The web UI."""
    from kdaudit.distill.config import AuditConfig

    defaults = AuditConfig.model_fields
    return _page(
        request,
        "index.html",
        datasets=DATASETS,
        attacks=ATTACKS,
        arch_examples=ARCH_EXAMPLES,
        preprocess_choices=PREPROCESS_CHOICES,
        default_students=", ".join(defaults["students"].default_factory()),  # type: ignore[misc]
        default_seeds=defaults["seeds"].default,
        default_defences=", ".join(DEFAULT_DEFENCES),
    )


@router.get("/audits/{audit_id}/report", response_class=HTMLResponse, include_in_schema=False)
def ui_report(request: Request, audit_id: AuditId) -> HTMLResponse:
    """UI page that fetches and shows one audit's HTML report (the key stays in the browser)."""
    return _page(request, "report.html", audit_id=audit_id)


@router.get("/static/{name}", include_in_schema=False)
def ui_static(name: str) -> Response:
    allowed = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}
    path = allowed.get(name)
    if path is None:
        raise not_found("static file", name)
    media = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# ---------------------------------------------------------------- HTML report

_CACHE_SIZE = 32
_cache: OrderedDict[str, str] = OrderedDict()
_cache_lock = threading.Lock()


def _render_cached(audit_id: str, body: dict[str, Any]) -> str:
    """Reports are immutable once stored, but key on the content anyway."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    key = f"{audit_id}:{digest}"
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        text = _renderer(body)(body, audit_id=audit_id)
    except ValueError as e:  # pydantic ValidationError included: a stored body that is not a v1 report
        raise Problem(500, f"the stored report cannot be rendered ({type(e).__name__})", slug="report-unrenderable") from None
    with _cache_lock:
        _cache[key] = text
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return text


def _renderer(body: dict[str, Any]):
    """The page for the report's schema: an audit's report, or a defence comparison's matrix."""
    from kdaudit.distill.defences.matrix import SCHEMA as DEFENCES_SCHEMA

    if body.get("schema") == DEFENCES_SCHEMA:
        from kdaudit.reporting.defence_html import render_defences_html

        return render_defences_html
    from kdaudit.reporting.html_page import render_report_html

    return render_report_html


@router.get(
    "/v1/audits/{audit_id}/report.html",
    tags=["reports"],
    response_class=HTMLResponse,
    responses={
        200: {"description": "The report as one self-contained HTML page", "content": {"text/html": {}}},
        401: {},
        404: {},
        409: {"description": "The audit has not succeeded (yet)"},
    },
)
@release_db
def get_report_html(
    audit_id: AuditId,
    request: Request,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
) -> Response:
    """The report as a self-contained HTML page (inline CSS and SVG plots, no scripts); 409 until the audit has succeeded."""
    body = report_body_or_409(session, tenant, audit_id, settings)
    text = _render_cached(audit_id, body)  # a sync route: FastAPI runs it in the thread pool
    trail.record(request, session, "report.download", "audit", audit_id, {"format": "html"})
    return HTMLResponse(
        text,
        headers={
            "Content-Security-Policy": REPORT_CSP,
            "Content-Disposition": f'inline; filename="kdaudit-report-{audit_id}.html"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=300",
        },
    )
