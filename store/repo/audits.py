"""Audits as the API sees them: submit (idempotent, under the tenant's active-audit limit),
read, list, count, cancel, delete.

What a worker does with an audit once it is queued lives in `running` (a whole audit) and
`parts` (a split one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Exists, exists, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from kdaudit.store.models import FINISHED, Audit, AuditPart, ReportRow, Tenant, new_id, utcnow
from kdaudit.store.repo.lease import LIVE, is_stale
from kdaudit.store.repo.paging import page


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used by this tenant for a different request."""


class ActiveLimit(Exception):
    """The tenant already has as many queued/running audits as allowed (args[0]: how many)."""


def count_active(session: Session, tenant_id: str) -> int:
    q = select(func.count()).select_from(Audit).where(Audit.tenant_id == tenant_id, Audit.status.in_(LIVE))
    return int(session.scalar(q) or 0)


def request_fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_audit(
    session: Session,
    *,
    tenant_id: str,
    teacher_id: str,
    config: dict[str, Any],
    runs_total: int,
    epochs: int | None,
    request_hash: str,
    idempotency_key: str | None = None,
    max_active: int | None = None,
    parts: list[list[int]] | None = None,
    admit: Callable[[Session], None] | None = None,
    kind: str = "audit",
) -> tuple[Audit, bool]:
    """Insert a queued audit; with an Idempotency-Key, return the earlier audit instead.

    Returns (audit, created). Raises IdempotencyConflict when the key was used for another body,
    ActiveLimit when the tenant already has `max_active` queued or running audits (a replay of
    an Idempotency-Key is answered before the limit is checked). With `parts` (seed sets, see
    `plan_parts`), the audit's `audit_parts` rows are inserted in the same transaction. `kind`
    'defend' is a defence comparison (its config a DefendConfig), run and kept like any audit.
    """
    if idempotency_key is not None:
        existing = get_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _check_same(existing, request_hash), False
    if max_active is not None:
        _admit_under_tenant_lock(session, tenant_id, max_active, admit)
    audit = Audit(
        id=new_id(),
        tenant_id=tenant_id,
        teacher_id=teacher_id,
        status="queued",
        kind=kind,
        config=config,
        runs_total=runs_total,
        runs_done=0,
        epochs=epochs,
        request_hash=request_hash,
        idempotency_key=idempotency_key,
        cancel_requested=False,
        attempts=0,
    )
    session.add(audit)
    try:
        if parts:
            session.flush()  # the audit row first (foreign key)
            session.add_all(
                AuditPart(audit_id=audit.id, part=i, seeds=list(seeds), status="queued", attempts=0)
                for i, seeds in enumerate(parts)
            )
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = get_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _check_same(existing, request_hash), False
    return audit, True


def _admit_under_tenant_lock(
    session: Session, tenant_id: str, max_active: int, admit: Callable[[Session], None] | None
) -> None:
    """Take the tenant's write lock, then refuse (ActiveLimit, or whatever `admit` raises) or
    return with the lock held, so the caller's INSERT commits under it.

    Serialise one tenant's submits before counting, with a no-op write to its row: on
    PostgreSQL it takes the row lock; on SQLite (which ignores FOR UPDATE and runs a bare
    SELECT outside any transaction) it opens the write transaction and takes the database's
    write lock, so the count below and the INSERT are one atomic step (20 parallel submits
    against a limit of 10 had accepted 20; tests/test_quota_race.py).
    """
    session.commit()  # end any read snapshot first: a stale one cannot be upgraded to a writer
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name))
    active = count_active(session, tenant_id)
    if active >= max_active:
        session.rollback()
        raise ActiveLimit(active)
    if admit is not None:  # further per-tenant checks under the same lock (it rolls back to refuse)
        admit(session)


def has_parts(audit_id: str | ColumnElement[str]) -> Exists:
    """SQL: the audit (an id, or a correlated `Audit.id`) is split into parts."""
    return exists().where(AuditPart.audit_id == audit_id)


def has_unfinished_parts(audit_id: str | ColumnElement[str]) -> Exists:
    """SQL: some part of the audit has not succeeded (yet)."""
    return exists().where(AuditPart.audit_id == audit_id, AuditPart.status != "succeeded")


def is_split(session: Session, audit_id: str) -> bool:
    found = session.scalar(select(AuditPart.part).where(AuditPart.audit_id == audit_id).limit(1))
    session.commit()
    return found is not None


def get_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Audit | None:
    return session.scalar(select(Audit).where(Audit.tenant_id == tenant_id, Audit.idempotency_key == key))


def _check_same(audit: Audit, request_hash: str) -> Audit:
    if audit.request_hash != request_hash:
        raise IdempotencyConflict(audit.id)
    return audit


def delete_audit(session: Session, audit_id: str) -> None:
    audit = session.get(Audit, audit_id)
    if audit is not None:
        session.delete(audit)
        session.commit()


def get_audit(session: Session, tenant_id: str | None, audit_id: str) -> Audit | None:
    """The audit, freshly read, if it belongs to `tenant_id` (None = any tenant, workers only)."""
    audit = session.scalar(
        select(Audit).where(Audit.id == audit_id).execution_options(populate_existing=True)
    )
    if audit is None or (tenant_id is not None and audit.tenant_id != tenant_id):
        return None
    return audit


def poll_audit(engine, tenant_id: str, audit_id: str):
    """The audit's row for a status poll (a Core row with the Audit's column attributes), or None
    if it is not `tenant_id`'s: one autocommit SELECT on `store.db.read_engine` (~4x cheaper than a
    session; see there). Retried once when the pooled connection turns out to be dead."""
    table = Audit.__table__
    stmt = select(table).where(table.c.id == audit_id, table.c.tenant_id == tenant_id)
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                return conn.execute(stmt).first()
        except DBAPIError as e:
            if attempt == 2 or not e.connection_invalidated:
                raise
    return None  # pragma: no cover - the loop returns or raises


def list_audits(
    session: Session, tenant_id: str, limit: int, offset: int, status: str | None = None
) -> tuple[list[Audit], int]:
    q = select(Audit).where(Audit.tenant_id == tenant_id)
    if status is not None:
        q = q.where(Audit.status == status)
    return page(session, q, (Audit.created_at.desc(), Audit.id), limit, offset)


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Audit.status, func.count()).group_by(Audit.status)).all()
    return {status: n for status, n in rows}


def is_finished(status: str) -> bool:
    return status in FINISHED


def get_report(session: Session, audit_id: str) -> ReportRow | None:
    return session.get(ReportRow, audit_id)


def request_cancel(session: Session, audit: Audit, stale_after: float) -> Audit:
    """Cancel a queued audit now; ask a running one to stop at the next epoch boundary.

    A running audit whose worker is gone (stale heartbeat) is cancelled at once.
    """
    now = utcnow()
    if audit.status == "queued":
        session.execute(
            update(Audit)
            .where(Audit.id == audit.id, Audit.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
        )
    elif audit.status == "running":
        values: dict[str, Any] = dict(cancel_requested=True, updated_at=now)
        if is_stale(audit.heartbeat_at, stale_after, now):
            values.update(status="cancelled", finished_at=now, error="cancelled (its worker had stopped)")
        session.execute(update(Audit).where(Audit.id == audit.id, Audit.status == "running").values(**values))
    session.commit()
    fresh = get_audit(session, None, audit.id)
    assert fresh is not None
    if fresh.status == "cancelled":  # a split audit's parts not started yet will never start
        session.execute(
            update(AuditPart)
            .where(AuditPart.audit_id == audit.id, AuditPart.status == "queued")
            .values(status="cancelled", finished_at=now, updated_at=now)
        )
        session.commit()
    return fresh
