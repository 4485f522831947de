"""/v1/audits: queue an audit of one of your teachers, follow it, cancel it, delete it.

    POST   /v1/audits                      202 + Location (Idempotency-Key replays)
    GET    /v1/audits                      your audits, newest first
    GET    /v1/audits/{id}                 status and progress (the hot path; see also poll_fast.py)
    POST   /v1/audits/{id}/cancel          a queued one at once, a running one at its next epoch
    DELETE /v1/audits/{id}[?cancel=true]   it, its report, runs, parts and checkpoints (204)

The report itself is in service/routers/reports.py.
"""

from __future__ import annotations

import logging

from celery import Celery
from fastapi import Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from kdaudit.service import trail
from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import get_celery, get_files, get_session, get_settings
from kdaudit.service.limits import check_audit_plan, limit_problem
from kdaudit.service.problems import Problem
from kdaudit.service.quotas import check_audit_size, tenant_compute_admission
from kdaudit.service.routers.audit_request import build_config
from kdaudit.service.routers.base import AuditId, errors, release_db, v1_router
from kdaudit.service.routers.ownership import Cancel, delete_owned, found_or_404, owned_audit, owned_teacher
from kdaudit.service.routers.pagination import MAX_OFFSET, MAX_PAGE, page_fields
from kdaudit.service.schemas import AuditCreate, AuditList, AuditOut, status_answer
from kdaudit.service.strict_body import strict_audit_body
from kdaudit.store import lifecycle, repo
from kdaudit.store.files import FileStore
from kdaudit.store.models import Audit, Tenant
from kdaudit.store.settings import ServiceSettings
from kdaudit.workers.app import TASK_RUN_AUDIT, TASK_RUN_PART

log = logging.getLogger("kdaudit.api")
router = v1_router()
#: the error answers of every route that queues work on the workers (audits, defence comparisons)
SUBMIT_ERRORS = errors(
    _400="The body is not JSON",
    _404="No such teacher (of yours)",
    _413="Body over max_json_body_bytes",
    _503="The job queue is unreachable; nothing was queued",
)


@router.post(
    "/audits",
    status_code=202,
    response_model=AuditOut,
    responses=SUBMIT_ERRORS,
)
@release_db
def submit_audit(
    body: AuditCreate,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(default=None, max_length=255, description="Replays return the same audit."),
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
    celery: Celery = Depends(get_celery),
    _strict: None = Depends(strict_audit_body),  # "epochs": "1" / true are refused, not coerced
) -> AuditOut:
    """Queue an audit of one of your teachers. Answers 202 with `Location` of the job."""
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs

    teacher = owned_teacher(session, tenant.id, body.teacher_id)
    config = build_config(body, teacher, files, settings.folder_datasets_dir)
    runs_total = len(plan_runs(AuditConfig.model_validate(config)))
    fingerprint = repo.request_fingerprint(body.model_dump(mode="json", exclude_none=True))
    replay = idempotency_key is not None and repo.get_by_idempotency_key(session, tenant.id, idempotency_key)
    admit = None
    if not replay:  # a replay returns the earlier audit even if limits changed since
        check_audit_plan(config, runs_total, settings)
        admit = tenant_compute_admission(tenant.id, check_audit_size(config, settings), settings)
    parts = repo.plan_parts(config, settings.audit_parts)  # None: one task runs the whole audit
    try:
        audit, created = repo.create_audit(
            session,
            tenant_id=tenant.id,
            teacher_id=teacher.id,
            config=config,
            runs_total=runs_total,
            epochs=config["schedule"]["epochs"],
            request_hash=fingerprint,
            idempotency_key=idempotency_key,
            max_active=settings.max_concurrent_audits_per_tenant,
            parts=parts,
            admit=admit,
        )
    except repo.ActiveLimit as e:
        active = e.args[0]
        raise limit_problem(
            429,
            "max_concurrent_audits_per_tenant",
            settings.max_concurrent_audits_per_tenant,
            f"you already have {active} audits queued or running, the limit is "
            f"{settings.max_concurrent_audits_per_tenant} (max_concurrent_audits_per_tenant); "
            "wait for one to finish or cancel one",
            requested=active + 1,
            headers={"Retry-After": str(settings.retry_after_seconds * 6)},
        ) from None
    except repo.IdempotencyConflict as e:
        raise Problem(
            422,
            f"Idempotency-Key {idempotency_key!r} was already used for a different request (audit {e})",
            slug="idempotency-key-reused",
        ) from None
    if created:
        enqueue_audit(celery, session, audit, parts)
        request.app.state.metrics.audits_submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return audit_response(response, audit, settings)


def enqueue_audit(celery: Celery, session: Session, audit: Audit, parts: list | None) -> None:
    """Send the audit's task(s) to the workers; if the broker is unreachable the new row goes
    again (503), so that nothing waits for a task that was never queued."""
    try:
        if parts:  # split across workers: one task per part, the last to finish assembles
            for i in range(len(parts)):
                celery.send_task(TASK_RUN_PART, args=[audit.id, i])
        else:
            celery.send_task(TASK_RUN_AUDIT, args=[audit.id])
    except Exception:
        log.exception("could not enqueue audit %s", audit.id)
        repo.delete_audit(session, audit.id)
        raise Problem(503, "the job queue is unreachable; nothing was queued, try again", slug="broker-unavailable") from None


@router.get("/audits", response_model=AuditList, responses=errors())
@release_db
def list_audits(
    request: Request,
    limit: int = Query(20, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    status: str | None = Query(None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
    tenant: Tenant = Depends(current_tenant),
    session: Session = Depends(get_session),
) -> AuditList:
    """Your audits, newest first."""
    items, total = repo.list_audits(session, tenant.id, limit, offset, status)
    return AuditList(items=[AuditOut.of(a) for a in items], **page_fields(request, total, limit, offset))


@router.get("/audits/{audit_id}", response_model=AuditOut, responses=errors(_404="No such audit (of yours)"))
async def get_audit(audit_id: AuditId, request: Request, tenant: Tenant = Depends(current_tenant)) -> Response:
    """Status and progress; `Retry-After` is set until the audit has finished."""
    # The status poll is the hot path (many clients, often): one threadpool hop for the one row
    # (one autocommit SELECT: repo.poll_audit), and the body serialised once here -- returning the
    # model would make FastAPI validate it against response_model again in another thread.
    read = await run_in_threadpool(repo.poll_audit, request.app.state.read_engine, tenant.id, audit_id)
    body, retry = status_answer(found_or_404(read, "audit", audit_id), request.app.state.settings.retry_after_seconds)
    return Response(body, media_type="application/json", headers={} if retry is None else {"Retry-After": retry})


@router.post(
    "/audits/{audit_id}/cancel",
    status_code=202,
    response_model=AuditOut,
    responses=errors(_404="No such audit (of yours)", _409="The audit has already finished"),
)
@release_db
def cancel_audit(
    audit_id: AuditId,
    response: Response,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
) -> AuditOut:
    """Cancel: a queued audit at once, a running one at its next epoch boundary."""
    audit = owned_audit(session, tenant.id, audit_id)
    if repo.is_finished(audit.status):
        raise Problem(409, f"the audit already {audit.status}", slug="already-finished", audit_status=audit.status)
    audit = repo.request_cancel(session, audit, settings.stale_after_seconds)
    return audit_response(response, audit, settings)


@router.delete(
    "/audits/{audit_id}",
    status_code=204,
    response_class=Response,
    responses=errors(_404="No such audit (of yours)", _409="The audit is queued or running (send ?cancel=true)"),
)
@release_db
def delete_audit(
    audit_id: AuditId,
    request: Request,
    cancel: Cancel = False,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
) -> Response:
    """Delete an audit with its report, runs, parts and checkpoints (a tombstone is kept)."""
    return delete_owned("audit", audit_id, lambda: lifecycle.delete_audit(
        session, settings.data_dir, tenant.id, audit_id, trail.actor(request), cancel=cancel
    ))  # fmt: skip


def audit_response(response: Response, audit: Audit, settings: ServiceSettings) -> AuditOut:
    """The audit, with `Retry-After` while it is still queued or running."""
    if not repo.is_finished(audit.status):
        response.headers["Retry-After"] = str(settings.retry_after_seconds)
    return AuditOut.of(audit)
