"""A whole audit in a worker's hands: claim, heartbeat, progress, and the end (report or failure).

    queued --claim--> running --store_report--> succeeded
                        |  +--finish--> failed | cancelled
    queued --cancel--> cancelled

The lease rules (who owns a running audit, when another worker may take it over) are
`lease`'s; this module says which row they apply to. A split audit is never claimed whole:
its parts are (see `parts`), and its report is assembled by `assembly.claim_assembly`'s winner,
which then owns the audit like this module's workers do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from kdaudit.store.models import Audit, ReportRow, utcnow
from kdaudit.store.repo import lease
from kdaudit.store.repo.audits import get_audit, has_parts, is_split
from kdaudit.store.repo.lease import Claim, Lease


class AuditLease(Lease):
    """The lease of a whole (unsplit) audit's row."""

    model = Audit
    noun = "audit"

    def __init__(self, audit_id: str) -> None:
        self.audit_id = audit_id

    def key(self) -> tuple[ColumnElement[bool], ...]:
        return (Audit.id == self.audit_id,)

    def claimable(self) -> tuple[ColumnElement[bool], ...]:
        return (~has_parts(self.audit_id),)

    def load(self, session: Session) -> Audit | Claim:
        audit = get_audit(session, None, self.audit_id)
        if audit is None:
            return Claim("skipped", "no such audit")
        if is_split(session, self.audit_id):
            return Claim("skipped", "the audit is split into parts (kdaudit.run_audit_part tasks)")
        return audit

    def give_up(self, session: Session, attempts: int, stale_after: float, now: datetime) -> bool:
        failed = lease.fail_orphan(session, self, attempts, lease.give_up_message(attempts, stale_after), now)
        session.commit()
        return failed


def claim_audit(
    session: Session, audit_id: str, worker_id: str, stale_after: float, max_attempts: int | None = None
) -> Claim:
    """Atomically take a queued audit, or take over a running one whose worker went silent.

    With `max_attempts`, an orphan that was already started that many times is failed instead
    of taken over (a teacher that crashes every worker must not loop forever).
    """
    return lease.claim(session, AuditLease(audit_id), worker_id, stale_after, max_attempts)


def heartbeat(session: Session, audit_id: str, worker_id: str) -> bool:
    """Refresh the heartbeat; False if this worker no longer owns the audit."""
    owns = lease.touch(session, AuditLease(audit_id), worker_id, heartbeat_at=utcnow())
    session.commit()
    return owns


def progress_values(
    now: datetime,
    current_run: str | None,
    epoch: int | None,
    epochs: int | None = None,
    runs_total: int | None = None,
) -> dict[str, Any]:
    """The columns a progress report writes (a progress report is a heartbeat too); `epochs` and
    `runs_total` only when known."""
    values: dict[str, Any] = dict(
        current_run=current_run, current_epoch=epoch, heartbeat_at=now, updated_at=now
    )
    if epochs is not None:
        values["epochs"] = epochs
    if runs_total is not None:
        values["runs_total"] = runs_total
    return values


def update_progress(
    session: Session,
    audit_id: str,
    worker_id: str,
    *,
    current_run: str | None,
    epoch: int | None,
    epochs: int | None,
    runs_total: int | None = None,
) -> bool:
    values = progress_values(utcnow(), current_run, epoch, epochs, runs_total)
    owns = lease.touch(session, AuditLease(audit_id), worker_id, **values)
    session.commit()
    return owns


def should_stop(session: Session, audit_id: str, worker_id: str) -> bool:
    """True if the owner asked to cancel, or this worker lost the audit (stop either way)."""
    row = session.execute(
        select(Audit.status, Audit.cancel_requested, Audit.claimed_by).where(Audit.id == audit_id)
    ).first()
    session.commit()
    if row is None:
        return True
    status, requested, owner = row
    return bool(requested) or status != "running" or owner != worker_id


def store_report(
    session: Session, audit_id: str, worker_id: str, body: dict[str, Any], seal: Any = None
) -> bool:
    """Save the report and mark the audit succeeded, only if this worker still owns it.
    `seal(body) -> stored body` encrypts it at rest (kdaudit.store.reports.seal_report)."""
    if not lease.release(session, AuditLease(audit_id), worker_id, "succeeded", None, utcnow()):
        return False
    existing = session.get(ReportRow, audit_id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    verdict = str(body.get("summary", {}).get("verdict", ""))
    stored = seal(body) if seal is not None else body
    session.add(
        ReportRow(audit_id=audit_id, schema=str(body.get("schema", "")), verdict=verdict, body=stored)
    )
    session.commit()
    return True


def finish_audit(
    session: Session, audit_id: str, worker_id: str, status: Literal["failed", "cancelled"], error: str | None
) -> bool:
    if not lease.release(session, AuditLease(audit_id), worker_id, status, error, utcnow()):
        return False
    session.commit()
    return True


def fail_unclaimed(session: Session, audit_id: str, error: str) -> bool:
    """Mark a queued audit failed before any worker ran it (e.g. its teacher file vanished)."""
    now = utcnow()
    res = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == "queued")
        .values(status="failed", error=error, finished_at=now, updated_at=now)
    )
    session.commit()
    return res.rowcount == 1
