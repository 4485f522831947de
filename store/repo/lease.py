"""The worker lease, written once for both leasable rows: a whole audit and one audit part.

A leased row goes `queued --claim--> running` and belongs to the worker named in `claimed_by`
as long as that worker keeps `heartbeat_at` fresh. Once the heartbeat is older than
`stale_after` another worker may take it over (compare-and-set on `attempts`, so exactly one
wins), or the sweeper sends it back to `queued`; after `max_attempts` starts it is failed
instead, because a teacher that crashes every worker must not loop forever.

Every transition is one compare-and-set UPDATE. What differs between an audit and a part
(which table, which row, what else must hold or change in the same transaction) is described by
a `Lease`; the rules themselves live only here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, func, update
from sqlalchemy.orm import Session

from kdaudit.store.models import Audit, AuditPart, utcnow

#: the statuses of an audit that can still do work
LIVE = ("queued", "running")


@dataclass
class Claim:
    outcome: Literal["claimed", "resumed", "skipped"]
    reason: str = ""

    @property
    def acquired(self) -> bool:
        return self.outcome in ("claimed", "resumed")


class Lease:
    """One leasable row. Subclasses name the table, the row and the extra conditions and
    side effects of their transitions; the base class defaults to "none"."""

    model: type[Audit] | type[AuditPart]
    #: how a refusal names the row ("audit is failed", "part is queued")
    noun: str
    audit_id: str

    def key(self) -> tuple[ColumnElement[bool], ...]:
        """The WHERE clauses that pick exactly this row."""
        raise NotImplementedError

    def claimable(self) -> tuple[ColumnElement[bool], ...]:
        """Further conditions for taking the row while it is queued."""
        return ()

    def claim_values(self) -> dict[str, Any]:
        """Further columns set when the row is taken while queued."""
        return {}

    def on_claimed(self, session: Session, now: datetime) -> None:
        """Writes in the claim's own transaction, after the row was taken while queued."""

    def load(self, session: Session) -> Audit | AuditPart | Claim:
        """The row, freshly read, to judge a takeover; or why it cannot be leased at all."""
        raise NotImplementedError

    def give_up(self, session: Session, attempts: int, stale_after: float, now: datetime) -> bool:
        """Fail the row after `attempts` vanished workers (and commit); True if this call failed
        the audit."""
        raise NotImplementedError


L = TypeVar("L", bound=Lease)


def is_stale(heartbeat: datetime | None, stale_after: float, now: datetime) -> bool:
    return heartbeat is None or heartbeat < now - timedelta(seconds=stale_after)


def stale_clause(model: type[Audit] | type[AuditPart], cutoff: datetime) -> ColumnElement[bool]:
    """`is_stale` as SQL: no heartbeat, or one older than `cutoff`."""
    return (model.heartbeat_at.is_(None)) | (model.heartbeat_at < cutoff)


def give_up_message(attempts: int, stale_after: float) -> str:
    return (
        f"the worker running this audit stopped responding (no heartbeat for {stale_after:g} s) "
        f"{attempts} time(s); giving up after max_attempts={attempts}. A worker may be crashing on "
        "this teacher (memory?); see the worker logs"
    )


def _gave_up_values(error: str, now: datetime) -> dict[str, Any]:
    """Column values of an audit or part failed because its worker vanished too often (claim released)."""
    return {
        "status": "failed",
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "current_run": None,
        "claimed_by": None,
    }


def owned(lease: Lease, worker_id: str) -> tuple[ColumnElement[bool], ...]:
    """The row, only while it runs under `worker_id`: every owner-only write is guarded by this."""
    return (*lease.key(), lease.model.status == "running", lease.model.claimed_by == worker_id)


# ---------------------------------------------------------------- claim


def claim(
    session: Session, lease: Lease, worker_id: str, stale_after: float, max_attempts: int | None = None
) -> Claim:
    """Atomically take a queued row, or take over a running one whose worker went silent.

    With `max_attempts`, an orphan that was already started that many times is failed instead
    of taken over.
    """
    now = utcnow()
    model = lease.model
    res = session.execute(
        update(model)
        .where(*lease.key(), model.status == "queued", *lease.claimable())
        .values(
            status="running",
            claimed_by=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(model.started_at, now),
            attempts=model.attempts + 1,
            **lease.claim_values(),
            updated_at=now,
        )
    )
    if res.rowcount == 1:
        lease.on_claimed(session, now)
        session.commit()
        return Claim("claimed")
    session.commit()
    row = lease.load(session)
    if isinstance(row, Claim):
        return row
    if row.status != "running":
        return Claim("skipped", f"{lease.noun} is {row.status}")
    if row.claimed_by == worker_id:
        return Claim("skipped", "already running in this worker")
    if not is_stale(row.heartbeat_at, stale_after, now):
        return Claim("skipped", f"running on live worker {row.claimed_by}")
    if max_attempts is not None and row.attempts >= max_attempts:
        lease.give_up(session, row.attempts, stale_after, utcnow())
        return Claim("skipped", f"gave up after {row.attempts} attempts")
    # take over an orphan: compare-and-set on the attempt counter so only one worker wins
    res = session.execute(
        update(model)
        .where(*lease.key(), model.status == "running", model.attempts == row.attempts)
        .values(claimed_by=worker_id, heartbeat_at=now, attempts=model.attempts + 1, updated_at=now)
    )
    session.commit()
    if res.rowcount == 1:
        return Claim("resumed", f"took over from {row.claimed_by}")
    return Claim("skipped", "another worker took it over first")


# ---------------------------------------------------------------- while running (owner only)


def touch(session: Session, lease: Lease, worker_id: str, **values: Any) -> bool:
    """Write `values` (heartbeat, progress) into the row if `worker_id` still owns it. The caller
    commits, after any writes that belong in the same transaction."""
    res = session.execute(update(lease.model).where(*owned(lease, worker_id)).values(**values))
    return res.rowcount == 1


def release(
    session: Session,
    lease: Lease,
    worker_id: str,
    status: str,
    error: str | None,
    now: datetime,
    **values: Any,
) -> bool:
    """End the row with `status` at `now` if `worker_id` still owns it; otherwise roll back and
    return False. The caller commits, after any writes that belong in the same transaction."""
    res = session.execute(
        update(lease.model)
        .where(*owned(lease, worker_id))
        .values(status=status, error=error, finished_at=now, updated_at=now, current_run=None, **values)
    )
    if res.rowcount != 1:
        session.rollback()
        return False
    return True


# ---------------------------------------------------------------- reclaiming (sweeper)


def fail_orphan(
    session: Session, lease: Lease, attempts: int, error: str, now: datetime, *also: ColumnElement[bool]
) -> bool:
    """Fail a running row started `attempts` times (compare-and-set, plus `also`); no commit."""
    model = lease.model
    res = session.execute(
        update(model)
        .where(*lease.key(), model.status == "running", model.attempts == attempts, *also)
        .values(**_gave_up_values(error, now))
    )
    return res.rowcount == 1


def reclaim_stale(
    session: Session,
    stale: Iterable[tuple[L, int]],
    stale_after: float,
    max_attempts: int,
    now: datetime,
) -> tuple[list[L], list[L]]:
    """Rows whose worker vanished (with their `attempts`): fail those started `max_attempts`
    times, send the others back to `queued` (compare-and-set on `attempts` and staleness, so two
    sweepers cannot both requeue one; finished runs stay recorded and the next worker resumes
    after them). Returns (leases whose audit this call failed, leases requeued)."""
    cutoff = now - timedelta(seconds=stale_after)
    failed: list[L] = []
    requeued: list[L] = []
    for lease, attempts in stale:
        if attempts >= max_attempts:
            if lease.give_up(session, attempts, stale_after, now):
                failed.append(lease)
            continue
        model = lease.model
        res = session.execute(
            update(model)
            .where(
                *lease.key(),
                model.status == "running",
                model.attempts == attempts,
                stale_clause(model, cutoff),
            )
            .values(status="queued", claimed_by=None, heartbeat_at=None, current_epoch=None, updated_at=now)
        )
        session.commit()
        if res.rowcount == 1:
            requeued.append(lease)
    return failed, requeued


def redispatch_waiting(session: Session, waiting: Iterable[L], old: datetime, now: datetime) -> list[L]:
    """Queued rows untouched since `old` (their task message was lost, e.g. the API died between
    the INSERT and the enqueue): bump `updated_at` (compare-and-set) and return them to be sent
    again; duplicate messages are harmless (the claim is atomic)."""
    bumped: list[L] = []
    for lease in waiting:
        model = lease.model
        res = session.execute(
            update(model)
            .where(*lease.key(), model.status == "queued", model.updated_at < old)
            .values(updated_at=now)
        )
        session.commit()
        if res.rowcount == 1:
            bumped.append(lease)
    return bumped
