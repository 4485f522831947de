"""Assembling a split audit's report: exactly one process claims it, once every part succeeded.

The winner owns the audit like a whole-audit worker (`running.heartbeat`, `store_report`,
`finish_audit`); if it vanishes, `reclaim_assembly` hands the audit to the next one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kdaudit.store.models import Audit, utcnow
from kdaudit.store.repo import lease
from kdaudit.store.repo.audits import get_audit, has_parts, has_unfinished_parts
from kdaudit.store.repo.lease import Claim
from kdaudit.store.repo.running import AuditLease


def claim_assembly(session: Session, audit_id: str, worker_id: str) -> Claim:
    """Claim the assembly of a split audit's report: succeeds for exactly one caller, and only
    once every part has succeeded (the "last finisher" rule).

    One compare-and-set UPDATE on the audit row (running, unclaimed, has parts, none of them
    unfinished). Two parts finishing at once both try; the row lock lets one win. Each part
    commits its own `succeeded` before it tries, so at least one of them sees every part done
    (under READ COMMITTED a statement sees every commit made before it started). The winner
    owns the audit like a whole-audit worker: `heartbeat`, `store_report` and `finish_audit`.
    """
    now = utcnow()
    res = session.execute(
        update(Audit)
        .where(
            Audit.id == audit_id,
            Audit.status == "running",
            Audit.claimed_by.is_(None),
            has_parts(audit_id),
            ~has_unfinished_parts(audit_id),
        )
        .values(claimed_by=worker_id, heartbeat_at=now, current_run=None, current_epoch=None, updated_at=now)
    )
    session.commit()
    if res.rowcount == 1:
        return Claim("claimed")
    audit = get_audit(session, None, audit_id)
    session.commit()
    if audit is None:
        return Claim("skipped", "no such audit")
    if audit.status != "running":
        return Claim("skipped", f"audit is {audit.status}")
    if audit.claimed_by is not None:
        return Claim("skipped", f"being assembled by {audit.claimed_by}")
    return Claim("skipped", "not every part has succeeded yet")


def reclaim_assembly(
    session: Session, now: datetime, stale_after: float, max_attempts: int
) -> tuple[list[str], list[str]]:
    """Split audits whose parts all succeeded but whose report nobody assembles: the last part's
    worker died before claiming it, or the assembler died. Returns (audits failed because their
    assembler kept dying, audits to hand to a `kdaudit.assemble_audit` task)."""
    audit_stale = lease.stale_clause(Audit, now - timedelta(seconds=stale_after))
    done = session.execute(
        select(Audit.id, Audit.attempts, Audit.claimed_by).where(
            Audit.status == "running", audit_stale, has_parts(Audit.id), ~has_unfinished_parts(Audit.id)
        )
    ).all()
    session.commit()
    failed: list[str] = []
    assemble: list[str] = []
    for audit_id, attempts, owner in done:
        cas = [Audit.id == audit_id, Audit.status == "running", Audit.attempts == attempts, audit_stale]
        if owner is None:  # the last part's worker died between its `succeeded` and its claim
            res = session.execute(
                update(Audit).where(*cas, Audit.claimed_by.is_(None)).values(heartbeat_at=now)
            )
        elif attempts >= max_attempts:  # the assembler keeps dying
            message = lease.give_up_message(attempts, stale_after)
            gave_up = lease.fail_orphan(
                session, AuditLease(audit_id), attempts, message, now, audit_stale, Audit.claimed_by == owner
            )
            session.commit()
            if gave_up:
                failed.append(audit_id)
            continue
        else:  # the assembler vanished: release its claim for the next one
            res = session.execute(
                update(Audit)
                .where(*cas, Audit.claimed_by == owner)
                .values(claimed_by=None, heartbeat_at=now, attempts=Audit.attempts + 1, updated_at=now)
            )
        session.commit()
        if res.rowcount == 1:
            assemble.append(audit_id)
    return failed, assemble
