"""/v1/audits/{id}/report: the stored `kdaudit.report/v1` document of a succeeded audit.

`report_body_or_409` is the one way to the stored report: this JSON route and the HTML report
(service/web.py) both read it through here.
"""

from __future__ import annotations

import logging

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from kdaudit.service import trail
from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import get_session, get_settings
from kdaudit.service.problems import Problem
from kdaudit.service.routers.base import AuditId, errors, release_db, v1_router
from kdaudit.service.routers.ownership import owned_audit
from kdaudit.store import repo
from kdaudit.store.crypto import StorageKeyError
from kdaudit.store.models import Tenant
from kdaudit.store.reports import open_report as keyring_open_report
from kdaudit.store.settings import ServiceSettings

log = logging.getLogger("kdaudit.api")
router = v1_router()


def report_body_or_409(session: Session, tenant: Tenant, audit_id: str, settings: ServiceSettings) -> dict:
    """The stored report of one of the tenant's audits: 404 if not theirs, 409 (with
    Retry-After while it still runs) until the audit has succeeded. Shared by JSON and HTML."""
    audit = owned_audit(session, tenant.id, audit_id)
    row = repo.get_report(session, audit.id) if audit.status == "succeeded" else None
    if row is None:
        finished = repo.is_finished(audit.status)
        headers = {} if finished else {"Retry-After": str(settings.retry_after_seconds)}
        why = f"the audit {audit.status}" + (f": {audit.error}" if audit.error else "")
        if not finished:
            why = f"the audit is {audit.status} ({audit.runs_done}/{audit.runs_total} runs done)"
        raise Problem(409, f"no report yet: {why}", slug="report-not-ready", headers=headers, audit_status=audit.status)
    try:
        return keyring_open_report(settings, audit.id, row.body)
    except StorageKeyError:  # the operator's keyring lacks the key that sealed it (see docs/security.md)
        log.error("report of audit %s cannot be opened with the configured storage keys", audit.id)
        raise Problem(500, "the stored report cannot be opened with the server's storage keys", slug="storage-key") from None


@router.get(
    "/audits/{audit_id}/report",
    responses={
        200: {
            "description": "The kdaudit.report/v1 document",
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
        },
        **errors(_404="No such audit (of yours)", _409="The audit has not succeeded (yet)"),
    },
)
@release_db
def get_report(
    audit_id: AuditId,
    request: Request,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
) -> Response:
    """The `kdaudit.report/v1` JSON; 409 until the audit has succeeded."""
    body = report_body_or_409(session, tenant, audit_id, settings)
    trail.record(request, session, "report.download", "audit", audit_id, {"format": "json"})
    return JSONResponse(body)
