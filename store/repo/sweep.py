"""The sweeper: finds audits and parts nobody is working on, for the caller to dispatch again.

Runs periodically in the workers (and once at worker start); every change it makes is a
compare-and-set, so several sweepers at once are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from kdaudit.store.models import Audit, AuditPart, utcnow
from kdaudit.store.repo.assembly import reclaim_assembly
from kdaudit.store.repo.audits import has_parts
from kdaudit.store.repo.lease import LIVE, reclaim_stale, redispatch_waiting, stale_clause
from kdaudit.store.repo.parts import PartLease
from kdaudit.store.repo.running import AuditLease


@dataclass
class Sweep:
    requeued: list[str]
    failed: list[str]
    redispatched: list[str]
    #: (audit id, part) of split audits' parts to send a `kdaudit.run_audit_part` task for
    parts: list[tuple[str, int]] = field(default_factory=list)
    #: split audits whose parts all succeeded but whose report nobody is assembling
    assemble: list[str] = field(default_factory=list)


def sweep_orphans(
    session: Session, stale_after: float, max_attempts: int, requeue_queued_after: float | None = None
) -> Sweep:
    """Find audits nobody is working on; the caller sends a task message for each id to dispatch.

    * running with a stale heartbeat (its worker vanished): back to `queued` (compare-and-set on
      `attempts`, so two sweepers cannot both requeue it), or `failed` once it was started
      `max_attempts` times. Finished runs stay recorded; the next worker resumes after them.
    * queued and untouched for `requeue_queued_after` seconds (its message was lost, e.g. the
      API died between the INSERT and the enqueue): `updated_at` is bumped (compare-and-set) and
      the id returned to be dispatched again; duplicate messages are harmless (atomic claim).

    The same for the parts of split audits, and split audits whose report nobody assembles
    (`assembly.reclaim_assembly`).
    """
    now = utcnow()
    out = Sweep([], [], [])
    cutoff = now - timedelta(seconds=stale_after)
    whole = ~has_parts(Audit.id)
    stale = session.execute(
        select(Audit.id, Audit.attempts).where(Audit.status == "running", stale_clause(Audit, cutoff), whole)
    ).all()
    session.commit()
    failed, requeued = reclaim_stale(
        session, [(AuditLease(a), attempts) for a, attempts in stale], stale_after, max_attempts, now
    )
    out.failed += [lease.audit_id for lease in failed]
    out.requeued += [lease.audit_id for lease in requeued]
    if requeue_queued_after is not None:
        old = now - timedelta(seconds=requeue_queued_after)
        waiting = session.scalars(
            select(Audit.id).where(Audit.status == "queued", Audit.updated_at < old, whole)
        ).all()
        session.commit()
        bumped = redispatch_waiting(session, [AuditLease(a) for a in waiting], old, now)
        out.redispatched += [lease.audit_id for lease in bumped]
    _sweep_parts(session, out, now, stale_after, max_attempts, requeue_queued_after)
    return out


def _sweep_parts(
    session: Session,
    out: Sweep,
    now: datetime,
    stale_after: float,
    max_attempts: int,
    requeue_queued_after: float | None,
) -> None:
    """`sweep_orphans` for split audits: parts whose worker vanished go back to `queued` (or
    fail their audit after `max_attempts`), queued parts untouched for `requeue_queued_after`
    are sent again, and an audit whose parts all succeeded but whose report nobody assembles is
    handed to a `kdaudit.assemble_audit` task."""
    cutoff = now - timedelta(seconds=stale_after)
    stale = session.execute(
        select(AuditPart.audit_id, AuditPart.part, AuditPart.attempts)
        .join(Audit, Audit.id == AuditPart.audit_id)
        .where(AuditPart.status == "running", Audit.status == "running", stale_clause(AuditPart, cutoff))
    ).all()
    session.commit()
    failed, requeued = reclaim_stale(
        session, [(PartLease(a, p), attempts) for a, p, attempts in stale], stale_after, max_attempts, now
    )
    out.failed += [lease.audit_id for lease in failed]
    out.parts += [(lease.audit_id, lease.part) for lease in requeued]

    if requeue_queued_after is not None:
        old = now - timedelta(seconds=requeue_queued_after)
        waiting = session.execute(
            select(AuditPart.audit_id, AuditPart.part)
            .join(Audit, Audit.id == AuditPart.audit_id)
            .where(AuditPart.status == "queued", Audit.status.in_(LIVE), AuditPart.updated_at < old)
        ).all()
        session.commit()
        bumped = redispatch_waiting(session, [PartLease(a, p) for a, p in waiting], old, now)
        out.parts += [(lease.audit_id, lease.part) for lease in bumped]

    failed_assembly, assemble = reclaim_assembly(session, now, stale_after, max_attempts)
    out.failed += failed_assembly
    out.assemble += assemble


def orphaned_audits(session: Session, stale_after: float) -> list[str]:
    """Running audits whose worker stopped heart-beating (to re-enqueue at worker start)."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    q = select(Audit.id).where(Audit.status == "running", stale_clause(Audit, cutoff))
    return list(session.scalars(q).all())
