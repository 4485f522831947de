"""Parts of a split audit in workers' hands.

An audit split into parts (`audit_parts` > 1, see `plan_parts`) has one `audit_parts` row per
part, each with the audit's life cycle and its own lease (`lease`'s rules, per part). The audit
row goes `queued -> running` with its first part and stays unclaimed (`claimed_by` NULL) while
parts train. Parts refresh the audit's heartbeat and progress. A failed part fails the audit, a
cancelled one cancels it; the process that finds every part succeeded claims the audit
(`assembly.claim_assembly`) and stores the report like a whole audit does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, CursorResult, exists, func, select, update
from sqlalchemy.orm import Session

from kdaudit.store.models import Audit, AuditPart, utcnow
from kdaudit.store.repo import lease
from kdaudit.store.repo.audits import get_audit
from kdaudit.store.repo.lease import LIVE, Claim, Lease
from kdaudit.store.repo.running import progress_values


def list_parts(session: Session, audit_id: str) -> list[AuditPart]:
    rows = session.scalars(
        select(AuditPart)
        .where(AuditPart.audit_id == audit_id)
        .order_by(AuditPart.part)
        .execution_options(populate_existing=True)
    ).all()
    return list(rows)


def get_part(session: Session, audit_id: str, part: int) -> AuditPart | None:
    return session.scalar(
        select(AuditPart)
        .where(AuditPart.audit_id == audit_id, AuditPart.part == part)
        .execution_options(populate_existing=True)
    )


def _part_label(row: AuditPart) -> str:
    seeds = ", ".join(str(s) for s in row.seeds or [])
    return f"part {row.part} (seed{'s' if len(row.seeds or []) != 1 else ''} {seeds})"


def _touch_audit(session: Session, audit_id: str, **values: Any) -> None:
    """Mirror a part's heartbeat or progress onto its (running) audit."""
    session.execute(update(Audit).where(Audit.id == audit_id, Audit.status == "running").values(**values))


def _fail_audit(session: Session, audit_id: str, error: str | None, now: datetime) -> CursorResult[Any]:
    """A failed part fails its audit (unless the audit already ended); no commit."""
    return session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status.in_(LIVE))
        .values(status="failed", error=error, finished_at=now, updated_at=now, current_run=None)
    )


class PartLease(Lease):
    """The lease of one part's row; the audit row follows it in the same transactions."""

    model = AuditPart
    noun = "part"

    def __init__(self, audit_id: str, part: int) -> None:
        self.audit_id = audit_id
        self.part = part

    def key(self) -> tuple[ColumnElement[bool], ...]:
        return (AuditPart.audit_id == self.audit_id, AuditPart.part == self.part)

    def claimable(self) -> tuple[ColumnElement[bool], ...]:
        return (exists().where(Audit.id == self.audit_id, Audit.status.in_(LIVE)),)

    def claim_values(self) -> dict[str, Any]:
        return {"error": None}

    def on_claimed(self, session: Session, now: datetime) -> None:
        """The audit goes `running` with its first claimed part."""
        session.execute(
            update(Audit)
            .where(Audit.id == self.audit_id, Audit.status == "queued")
            .values(
                status="running", started_at=func.coalesce(Audit.started_at, now), attempts=Audit.attempts + 1
            )
        )
        _touch_audit(session, self.audit_id, heartbeat_at=now, updated_at=now)

    def load(self, session: Session) -> AuditPart | Claim:
        audit = get_audit(session, None, self.audit_id)
        if audit is None:
            return Claim("skipped", "no such audit")
        if audit.status not in LIVE:
            return Claim("skipped", f"audit is {audit.status}")
        row = get_part(session, self.audit_id, self.part)
        session.commit()
        if row is None:
            return Claim("skipped", f"the audit has no part {self.part}")
        return row

    def give_up(self, session: Session, attempts: int, stale_after: float, now: datetime) -> bool:
        """Fail the part, and so its audit, naming the part's seeds in the error."""
        row = get_part(session, self.audit_id, self.part)
        label = _part_label(row) if row is not None else f"part {self.part}"
        message = f"{label}: {lease.give_up_message(attempts, stale_after)}"
        if not lease.fail_orphan(session, self, attempts, message, now):
            session.rollback()
            return False
        failed = _fail_audit(session, self.audit_id, message, now)
        session.commit()
        return failed.rowcount == 1


def claim_part(
    session: Session,
    audit_id: str,
    part: int,
    worker_id: str,
    stale_after: float,
    max_attempts: int | None = None,
) -> Claim:
    """Atomically take a queued part of a queued or running audit, or take over a running part
    whose worker went silent; `claim_audit`'s rules, per part. The audit goes `running` with
    its first claimed part."""
    return lease.claim(session, PartLease(audit_id, part), worker_id, stale_after, max_attempts)


def part_heartbeat(session: Session, audit_id: str, part: int, worker_id: str) -> bool:
    """Refresh the part's heartbeat (and its audit's); False if this worker no longer owns the part."""
    now = utcnow()
    owns = lease.touch(session, PartLease(audit_id, part), worker_id, heartbeat_at=now)
    if owns:
        _touch_audit(session, audit_id, heartbeat_at=now)
    session.commit()
    return owns


def update_part_progress(
    session: Session,
    audit_id: str,
    part: int,
    worker_id: str,
    *,
    current_run: str | None,
    epoch: int | None,
    epochs: int | None,
    runs_total: int | None = None,
) -> bool:
    """Progress of one part, shown on the audit too (`current_run`: the last part to report)."""
    now = utcnow()
    owns = lease.touch(
        session, PartLease(audit_id, part), worker_id, **progress_values(now, current_run, epoch)
    )
    if owns:
        _touch_audit(session, audit_id, **progress_values(now, current_run, epoch, epochs, runs_total))
    session.commit()
    return owns


def should_stop_part(session: Session, audit_id: str, part: int, worker_id: str) -> bool:
    """True if the owner asked to cancel, the audit ended (another part failed), or this worker
    lost the part."""
    row = session.execute(
        select(Audit.status, Audit.cancel_requested, AuditPart.status, AuditPart.claimed_by)
        .join(AuditPart, AuditPart.audit_id == Audit.id)
        .where(Audit.id == audit_id, AuditPart.part == part)
    ).first()
    session.commit()
    if row is None:
        return True
    status, requested, part_status, owner = row
    return bool(requested) or status != "running" or part_status != "running" or owner != worker_id


def finish_part(
    session: Session,
    audit_id: str,
    part: int,
    worker_id: str,
    status: Literal["succeeded", "failed", "cancelled"],
    error: str | None = None,
) -> bool:
    """End a part this worker owns. A failed part fails its audit with `error`; a part stopped
    because its owner cancelled cancels the audit. One transaction, so the audit never stays
    running behind a failed part. False if this worker no longer owns the part."""
    now = utcnow()
    if not lease.release(
        session, PartLease(audit_id, part), worker_id, status, error, now, current_epoch=None
    ):
        return False
    if status == "failed":
        _fail_audit(session, audit_id, error, now)
    elif status == "cancelled":
        session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status == "running", Audit.cancel_requested.is_(True))
            .values(status="cancelled", error=error, finished_at=now, updated_at=now, current_run=None)
        )
    session.commit()
    return True
