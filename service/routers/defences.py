"""/v1/defences: queue a defence comparison (`kdaudit defend`) of one of your teachers.

    POST /v1/defences    202 + Location (Idempotency-Key replays), the audit resource of kind 'defend'

A defence comparison *is* an audit of kind 'defend': it is followed, cancelled, deleted and kept
(retention, quotas) through /v1/audits/{id}, and its report - the `kdaudit.defences/v1` matrix -
is served by /v1/audits/{id}/report (JSON) and /ui/audits/{id}/report (HTML). Only its request
and its planning differ, hence this router (service/defence_plan.py sizes it).
"""

from __future__ import annotations

from celery import Celery
from fastapi import Depends, Header, Request, Response
from sqlalchemy.orm import Session

from kdaudit.service.auth import current_tenant
from kdaudit.service.defence_plan import DefenceCreate, build_defend_config, planned_audits, planned_runs
from kdaudit.service.deps import get_celery, get_session, get_settings
from kdaudit.service.limits import check_audit_plan, limit_problem
from kdaudit.service.problems import Problem
from kdaudit.service.quotas import check_audit_size, tenant_compute_admission
from kdaudit.service.routers.audits import SUBMIT_ERRORS, audit_response, enqueue_audit
from kdaudit.service.routers.base import release_db, v1_router
from kdaudit.service.routers.ownership import owned_teacher
from kdaudit.service.schemas import AuditOut
from kdaudit.store import repo
from kdaudit.store.models import Tenant
from kdaudit.store.settings import ServiceSettings

router = v1_router()


@router.post(
    "/defences",
    status_code=202,
    response_model=AuditOut,
    responses=SUBMIT_ERRORS,
)
@release_db
def submit_defences(
    body: DefenceCreate,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(default=None, max_length=255, description="Replays return the same audit."),
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
    celery: Celery = Depends(get_celery),
) -> AuditOut:
    """Queue a comparison of defences against distillation for one of your teachers (an audit of kind
    `defend`); answers 202 with `Location` of the job. Nasty-teacher defences need the teacher's weights."""
    teacher = owned_teacher(session, tenant.id, body.teacher_id)
    config = build_defend_config(body, teacher)
    fingerprint = repo.request_fingerprint({"kind": "defend", **body.model_dump(mode="json", exclude_none=True)})
    replay = idempotency_key is not None and repo.get_by_idempotency_key(session, tenant.id, idempotency_key)
    admit = None
    if not replay:  # a replay returns the earlier comparison even if limits changed since
        admit = tenant_compute_admission(tenant.id, _check_size(config, settings), settings)
    try:
        audit, created = repo.create_audit(
            session, tenant_id=tenant.id, teacher_id=teacher.id, config=config, kind="defend",
            runs_total=planned_runs(config, nasty_training=False), epochs=config.get("epochs"),
            request_hash=fingerprint, idempotency_key=idempotency_key,
            max_active=settings.max_concurrent_audits_per_tenant, admit=admit,
        )  # fmt: skip
    except repo.ActiveLimit as e:
        raise limit_problem(
            429, "max_concurrent_audits_per_tenant", settings.max_concurrent_audits_per_tenant,
            f"you already have {e.args[0]} audits queued or running, the limit is "
            f"{settings.max_concurrent_audits_per_tenant} (max_concurrent_audits_per_tenant)",
            requested=e.args[0] + 1, headers={"Retry-After": str(settings.retry_after_seconds * 6)},
        ) from None  # fmt: skip
    except repo.IdempotencyConflict as e:
        raise Problem(422, f"Idempotency-Key {idempotency_key!r} was already used for a different request (audit {e})",
                      slug="idempotency-key-reused") from None
    if created:
        enqueue_audit(celery, session, audit, None)  # one task: the audit job dispatches on the kind
        request.app.state.metrics.audits_submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return audit_response(response, audit, settings)


def _check_size(config: dict, settings: ServiceSettings) -> float:
    """The audits' limits on each planned audit, runs and FLOPs on their sum; returns the FLOPs."""
    audits = planned_audits(config)
    runs = planned_runs(config)
    for audit in audits:
        check_audit_plan(audit, runs, settings)  # runs: the comparison's total; queries: per audit (per teacher)
    flops = sum(check_audit_size(audit, settings) for audit in audits)
    if flops > settings.max_compute_flops_per_audit:
        raise limit_problem(
            422, "max_compute_flops_per_audit", settings.max_compute_flops_per_audit,
            f"the comparison's {len(audits)} audits would take about {flops:.3g} training FLOPs, over the limit of "
            f"{settings.max_compute_flops_per_audit:.3g} (max_compute_flops_per_audit); use fewer defences, epochs, "
            "seeds or students", requested=flops,
        )  # fmt: skip
    return flops
