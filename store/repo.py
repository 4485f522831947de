"""Repository functions: every read and write the service and the workers make.

Each mutating function commits its own transaction. State transitions of an audit are
compare-and-set UPDATEs, so two processes can never both run the same audit:

    queued --claim--> running --store_report--> succeeded
                        |  +--finish--> failed | cancelled
    queued --cancel--> cancelled

A running audit belongs to the worker named in `claimed_by` as long as that worker keeps
`heartbeat_at` fresh; once the heartbeat is older than `stale_after` another worker may
take it over (and resumes from the runs already recorded).

An audit split into parts (`audit_parts` > 1, see `plan_parts`) has one `audit_parts` row per
part, each with the same life cycle and its own claim and heartbeat; the audit row goes
`queued -> running` with its first part and stays unclaimed (`claimed_by` NULL) while parts
train. Parts refresh the audit's heartbeat and progress. A failed part fails the audit, a
cancelled one cancels it; the process that finds every part succeeded claims the audit
(`claim_assembly`, one compare-and-set) and stores the report like a whole audit does.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kdaudit.store.models import (
    FINISHED,
    ApiKey,
    Audit,
    AuditPart,
    ReportRow,
    Run,
    Teacher,
    Tenant,
    new_id,
    utcnow,
)

KEY_PREFIX = "kda_"


# ---------------------------------------------------------------- tenants and keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    tenant = Tenant(name=name)
    session.add(tenant)
    try:
        session.commit()
    except IntegrityError:  # created concurrently
        session.rollback()
        tenant = session.scalar(select(Tenant).where(Tenant.name == name))
        assert tenant is not None
    return tenant


def create_api_key(session: Session, tenant_name: str) -> tuple[str, ApiKey]:
    """Create a key for `tenant_name` (creating the tenant if new). The key is returned once."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:12])
    session.add(row)
    session.commit()
    return key, row


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(
            ApiKey.key_hash == hash_key(key),
            ApiKey.revoked_at.is_(None),
            (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > utcnow()),
        )
    )


def revoke_key(session: Session, key: str) -> bool:
    res = session.execute(
        update(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    session.commit()
    return res.rowcount == 1


# ---------------------------------------------------------------- teachers


def add_teacher(session: Session, tenant_id: str, **fields: Any) -> Teacher:
    teacher = Teacher(tenant_id=tenant_id, **fields)
    session.add(teacher)
    session.commit()
    return teacher


def get_teacher(session: Session, tenant_id: str | None, teacher_id: str) -> Teacher | None:
    """The teacher if it exists and belongs to `tenant_id` (None = any tenant, workers only)."""
    teacher = session.get(Teacher, teacher_id)
    if teacher is None or (tenant_id is not None and teacher.tenant_id != tenant_id):
        return None
    return teacher


def list_teachers(session: Session, tenant_id: str, limit: int, offset: int) -> tuple[list[Teacher], int]:
    q = select(Teacher).where(Teacher.tenant_id == tenant_id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    items = session.scalars(q.order_by(Teacher.created_at.desc(), Teacher.id).limit(limit).offset(offset)).all()
    return list(items), total


# ---------------------------------------------------------------- audits


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used by this tenant for a different request."""


class ActiveLimit(Exception):
    """The tenant already has as many queued/running audits as allowed (args[0]: how many)."""


def count_active(session: Session, tenant_id: str) -> int:
    q = select(func.count()).select_from(Audit).where(
        Audit.tenant_id == tenant_id, Audit.status.in_(("queued", "running"))
    )
    return int(session.scalar(q) or 0)


def request_fingerprint(payload: dict[str, Any]) -> str:
    import json

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
) -> tuple[Audit, bool]:
    """Insert a queued audit; with an Idempotency-Key, return the earlier audit instead.

    Returns (audit, created). Raises IdempotencyConflict when the key was used for another body,
    ActiveLimit when the tenant already has `max_active` queued or running audits (a replay of
    an Idempotency-Key is answered before the limit is checked). With `parts` (seed sets, see
    `plan_parts`), the audit's `audit_parts` rows are inserted in the same transaction.
    """
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _check_same(existing, request_hash), False
    if max_active is not None:
        # Serialise one tenant's submits before counting, with a no-op write to its row: on
        # PostgreSQL it takes the row lock; on SQLite (which ignores FOR UPDATE and runs a bare
        # SELECT outside any transaction) it opens the write transaction and takes the database's
        # write lock, so the count below and the INSERT are one atomic step (20 parallel submits
        # against a limit of 10 had accepted 20; tests/test_quota_race.py).
        session.commit()  # end any read snapshot first: a stale one cannot be upgraded to a writer
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name))
        active = count_active(session, tenant_id)
        if active >= max_active:
            session.rollback()
            raise ActiveLimit(active)
        if admit is not None:  # further per-tenant checks under the same lock (it rolls back to refuse)
            admit(session)
    audit = Audit(
        id=new_id(),
        tenant_id=tenant_id,
        teacher_id=teacher_id,
        status="queued",
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
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _check_same(existing, request_hash), False
    return audit, True


def get_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Audit | None:
    return _by_idempotency_key(session, tenant_id, key)


def _by_idempotency_key(session: Session, tenant_id: str, key: str) -> Audit | None:
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
    audit = session.scalar(select(Audit).where(Audit.id == audit_id).execution_options(populate_existing=True))
    if audit is None or (tenant_id is not None and audit.tenant_id != tenant_id):
        return None
    return audit


def list_audits(
    session: Session, tenant_id: str, limit: int, offset: int, status: str | None = None
) -> tuple[list[Audit], int]:
    q = select(Audit).where(Audit.tenant_id == tenant_id)
    if status is not None:
        q = q.where(Audit.status == status)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    items = session.scalars(q.order_by(Audit.created_at.desc(), Audit.id).limit(limit).offset(offset)).all()
    return list(items), total


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Audit.status, func.count()).group_by(Audit.status)).all()
    return {status: n for status, n in rows}


# ---------------------------------------------------------------- claiming (workers)


@dataclass
class Claim:
    outcome: Literal["claimed", "resumed", "skipped"]
    reason: str = ""

    @property
    def acquired(self) -> bool:
        return self.outcome in ("claimed", "resumed")


def _stale(heartbeat: datetime | None, stale_after: float, now: datetime) -> bool:
    return heartbeat is None or heartbeat < now - timedelta(seconds=stale_after)


def claim_audit(
    session: Session, audit_id: str, worker_id: str, stale_after: float, max_attempts: int | None = None
) -> Claim:
    """Atomically take a queued audit, or take over a running one whose worker went silent.

    With `max_attempts`, an orphan that was already started that many times is failed instead
    of taken over (a teacher that crashes every worker must not loop forever).
    """
    now = utcnow()
    res = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == "queued", ~_has_parts(audit_id))
        .values(
            status="running",
            claimed_by=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(Audit.started_at, now),
            attempts=Audit.attempts + 1,
            updated_at=now,
        )
    )
    session.commit()
    if res.rowcount == 1:
        return Claim("claimed")
    audit = get_audit(session, None, audit_id)
    if audit is None:
        return Claim("skipped", "no such audit")
    if is_split(session, audit_id):
        return Claim("skipped", "the audit is split into parts (kdaudit.run_audit_part tasks)")
    if audit.status != "running":
        return Claim("skipped", f"audit is {audit.status}")
    if audit.claimed_by == worker_id:
        return Claim("skipped", "already running in this worker")
    if not _stale(audit.heartbeat_at, stale_after, now):
        return Claim("skipped", f"running on live worker {audit.claimed_by}")
    if max_attempts is not None and audit.attempts >= max_attempts:
        _give_up(session, audit, stale_after)
        return Claim("skipped", f"gave up after {audit.attempts} attempts")
    # take over an orphan: compare-and-set on the attempt counter so only one worker wins
    res = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == "running", Audit.attempts == audit.attempts)
        .values(claimed_by=worker_id, heartbeat_at=now, attempts=Audit.attempts + 1, updated_at=now)
    )
    session.commit()
    if res.rowcount == 1:
        return Claim("resumed", f"took over from {audit.claimed_by}")
    return Claim("skipped", "another worker took it over first")


def _owned(audit_id: str, worker_id: str):
    return (Audit.id == audit_id, Audit.status == "running", Audit.claimed_by == worker_id)


def heartbeat(session: Session, audit_id: str, worker_id: str) -> bool:
    """Refresh the heartbeat; False if this worker no longer owns the audit."""
    now = utcnow()
    res = session.execute(update(Audit).where(*_owned(audit_id, worker_id)).values(heartbeat_at=now))
    session.commit()
    return res.rowcount == 1


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
    now = utcnow()
    values: dict[str, Any] = dict(current_run=current_run, current_epoch=epoch, heartbeat_at=now, updated_at=now)
    if epochs is not None:
        values["epochs"] = epochs
    if runs_total is not None:
        values["runs_total"] = runs_total
    res = session.execute(update(Audit).where(*_owned(audit_id, worker_id)).values(**values))
    session.commit()
    return res.rowcount == 1


def record_run(session: Session, audit_id: str, run_key: str, record: dict[str, Any]) -> bool:
    """Store one finished run (idempotent per run key) and refresh runs_done. True if new."""
    session.add(
        Run(
            audit_id=audit_id,
            run_key=run_key,
            kind=str(record.get("kind", "")),
            student=str(record.get("student", "")),
            seed=int(record.get("seed", 0)),
            test_accuracy=float(record.get("test_accuracy", 0.0)),
            record=record,
        )
    )
    try:
        session.commit()
        new = True
    except IntegrityError:
        session.rollback()
        new = False
    done = session.scalar(select(func.count()).select_from(Run).where(Run.audit_id == audit_id)) or 0
    session.execute(update(Audit).where(Audit.id == audit_id).values(runs_done=done, updated_at=utcnow()))
    session.commit()
    return new


def list_runs(session: Session, audit_id: str) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.audit_id == audit_id).order_by(Run.id)).all())


def done_runs(session: Session, audit_id: str) -> dict[str, dict[str, Any]]:
    return {r.run_key: r.record for r in list_runs(session, audit_id)}


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
    now = utcnow()
    res = session.execute(
        update(Audit)
        .where(*_owned(audit_id, worker_id))
        .values(status="succeeded", finished_at=now, updated_at=now, current_run=None, error=None)
    )
    if res.rowcount != 1:
        session.rollback()
        return False
    existing = session.get(ReportRow, audit_id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    verdict = str(body.get("summary", {}).get("verdict", ""))
    stored = seal(body) if seal is not None else body
    session.add(ReportRow(audit_id=audit_id, schema=str(body.get("schema", "")), verdict=verdict, body=stored))
    session.commit()
    return True


def finish_audit(
    session: Session, audit_id: str, worker_id: str, status: Literal["failed", "cancelled"], error: str | None
) -> bool:
    now = utcnow()
    res = session.execute(
        update(Audit)
        .where(*_owned(audit_id, worker_id))
        .values(status=status, error=error, finished_at=now, updated_at=now, current_run=None)
    )
    session.commit()
    return res.rowcount == 1


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


# ---------------------------------------------------------------- cancel, reports (API)


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
        if _stale(audit.heartbeat_at, stale_after, now):
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


def get_report(session: Session, audit_id: str) -> ReportRow | None:
    return session.get(ReportRow, audit_id)


def _give_up_message(attempts: int, stale_after: float) -> str:
    return (
        f"the worker running this audit stopped responding (no heartbeat for {stale_after:g} s) "
        f"{attempts} time(s); giving up after max_attempts={attempts}. A worker may be crashing on "
        "this teacher (memory?); see the worker logs"
    )


def _give_up(session: Session, audit: Audit, stale_after: float) -> bool:
    now = utcnow()
    res = session.execute(
        update(Audit)
        .where(Audit.id == audit.id, Audit.status == "running", Audit.attempts == audit.attempts)
        .values(
            status="failed",
            error=_give_up_message(audit.attempts, stale_after),
            finished_at=now,
            updated_at=now,
            current_run=None,
            claimed_by=None,
        )
    )
    session.commit()
    return res.rowcount == 1


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
    """
    now = utcnow()
    out = Sweep([], [], [])
    cutoff = now - timedelta(seconds=stale_after)
    whole = ~exists().where(AuditPart.audit_id == Audit.id)  # split audits: see _sweep_parts
    stale = session.execute(
        select(Audit.id, Audit.attempts, Audit.claimed_by).where(
            Audit.status == "running", (Audit.heartbeat_at.is_(None)) | (Audit.heartbeat_at < cutoff), whole
        )
    ).all()
    session.commit()
    for audit_id, attempts, _owner in stale:
        if attempts >= max_attempts:
            res = session.execute(
                update(Audit)
                .where(Audit.id == audit_id, Audit.status == "running", Audit.attempts == attempts)
                .values(**_gave_up(_give_up_message(attempts, stale_after), now))
            )
            session.commit()
            if res.rowcount == 1:
                out.failed.append(audit_id)
            continue
        res = session.execute(
            update(Audit)
            .where(
                Audit.id == audit_id,
                Audit.status == "running",
                Audit.attempts == attempts,
                (Audit.heartbeat_at.is_(None)) | (Audit.heartbeat_at < cutoff),
            )
            .values(status="queued", claimed_by=None, heartbeat_at=None, current_epoch=None, updated_at=now)
        )
        session.commit()
        if res.rowcount == 1:
            out.requeued.append(audit_id)
    if requeue_queued_after is not None:
        old = now - timedelta(seconds=requeue_queued_after)
        waiting = session.execute(
            select(Audit.id, Audit.updated_at).where(Audit.status == "queued", Audit.updated_at < old, whole)
        ).all()
        session.commit()
        for audit_id, _seen in waiting:
            res = session.execute(
                update(Audit)
                .where(Audit.id == audit_id, Audit.status == "queued", Audit.updated_at < old)
                .values(updated_at=now)
            )
            session.commit()
            if res.rowcount == 1:
                out.redispatched.append(audit_id)
    _sweep_parts(session, out, now, stale_after, max_attempts, requeue_queued_after)
    return out


def orphaned_audits(session: Session, stale_after: float) -> list[str]:
    """Running audits whose worker stopped heart-beating (to re-enqueue at worker start)."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    q = select(Audit.id).where(
        Audit.status == "running", (Audit.heartbeat_at.is_(None)) | (Audit.heartbeat_at < cutoff)
    )
    return list(session.scalars(q).all())


def is_finished(status: str) -> bool:
    return status in FINISHED


# ---------------------------------------------------------------- split audits (parts)


def split_seeds(seeds: Iterable[int], parts: int) -> list[list[int]]:
    """Round-robin `seeds` over `min(parts, len(seeds))` disjoint, non-empty parts."""
    seeds = list(seeds)
    n = max(1, min(parts, len(seeds)))
    return [seeds[i::n] for i in range(n)]


def plan_parts(config: dict[str, Any], audit_parts: int) -> list[list[int]] | None:
    """The seed sets an audit (a resolved AuditConfig dump) is split into, or None to run it as
    one task: `audit_parts` is 1, or the audit has a single seed (a seed is the engine's unit
    of work: one cohort sharing one teacher forward per batch)."""
    seeds = int(config.get("seeds", 1))
    if audit_parts <= 1 or seeds <= 1:
        return None
    base = int(config.get("base_seed", 0))
    return split_seeds(range(base, base + seeds), audit_parts)


def _has_parts(audit_id: str):
    return exists().where(AuditPart.audit_id == audit_id)


def is_split(session: Session, audit_id: str) -> bool:
    found = session.scalar(select(AuditPart.part).where(AuditPart.audit_id == audit_id).limit(1))
    session.commit()
    return found is not None


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


def _part_owned(audit_id: str, part: int, worker_id: str):
    return (
        AuditPart.audit_id == audit_id,
        AuditPart.part == part,
        AuditPart.status == "running",
        AuditPart.claimed_by == worker_id,
    )


def _part_label(row: AuditPart) -> str:
    seeds = ", ".join(str(s) for s in row.seeds or [])
    return f"part {row.part} (seed{'s' if len(row.seeds or []) != 1 else ''} {seeds})"


def claim_part(
    session: Session, audit_id: str, part: int, worker_id: str, stale_after: float, max_attempts: int | None = None
) -> Claim:
    """Atomically take a queued part of a queued or running audit, or take over a running part
    whose worker went silent; `claim_audit`'s rules, per part. The audit goes `running` with
    its first claimed part."""
    now = utcnow()
    live = exists().where(Audit.id == audit_id, Audit.status.in_(("queued", "running")))
    res = session.execute(
        update(AuditPart)
        .where(AuditPart.audit_id == audit_id, AuditPart.part == part, AuditPart.status == "queued", live)
        .values(
            status="running",
            claimed_by=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(AuditPart.started_at, now),
            attempts=AuditPart.attempts + 1,
            error=None,
            updated_at=now,
        )
    )
    if res.rowcount == 1:
        session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status == "queued")
            .values(status="running", started_at=func.coalesce(Audit.started_at, now), attempts=Audit.attempts + 1)
        )
        session.execute(
            update(Audit).where(Audit.id == audit_id, Audit.status == "running").values(heartbeat_at=now, updated_at=now)
        )
        session.commit()
        return Claim("claimed")
    session.commit()
    audit = get_audit(session, None, audit_id)
    if audit is None:
        return Claim("skipped", "no such audit")
    if audit.status not in ("queued", "running"):
        return Claim("skipped", f"audit is {audit.status}")
    row = get_part(session, audit_id, part)
    session.commit()
    if row is None:
        return Claim("skipped", f"the audit has no part {part}")
    if row.status != "running":
        return Claim("skipped", f"part is {row.status}")
    if row.claimed_by == worker_id:
        return Claim("skipped", "already running in this worker")
    if not _stale(row.heartbeat_at, stale_after, now):
        return Claim("skipped", f"running on live worker {row.claimed_by}")
    if max_attempts is not None and row.attempts >= max_attempts:
        _give_up_part(session, audit_id, part, row.attempts, stale_after)
        return Claim("skipped", f"gave up after {row.attempts} attempts")
    res = session.execute(
        update(AuditPart)
        .where(
            AuditPart.audit_id == audit_id,
            AuditPart.part == part,
            AuditPart.status == "running",
            AuditPart.attempts == row.attempts,
        )
        .values(claimed_by=worker_id, heartbeat_at=now, attempts=AuditPart.attempts + 1, updated_at=now)
    )
    session.commit()
    if res.rowcount == 1:
        return Claim("resumed", f"took over from {row.claimed_by}")
    return Claim("skipped", "another worker took it over first")


def _gave_up(error: str, now: datetime) -> dict[str, Any]:
    """Column values of an audit or part failed because its worker vanished too often (claim released)."""
    return {"status": "failed", "error": error, "finished_at": now, "updated_at": now, "current_run": None, "claimed_by": None}


def _give_up_part(session: Session, audit_id: str, part: int, attempts: int, stale_after: float) -> bool:
    """Fail a part (and so its audit) whose worker vanished `attempts` times (compare-and-set)."""
    now = utcnow()
    row = get_part(session, audit_id, part)
    label = _part_label(row) if row is not None else f"part {part}"
    message = f"{label}: {_give_up_message(attempts, stale_after)}"
    res = session.execute(
        update(AuditPart)
        .where(
            AuditPart.audit_id == audit_id,
            AuditPart.part == part,
            AuditPart.status == "running",
            AuditPart.attempts == attempts,
        )
        .values(**_gave_up(message, now))
    )
    if res.rowcount != 1:
        session.rollback()
        return False
    failed = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status.in_(("queued", "running")))
        .values(status="failed", error=message, finished_at=now, updated_at=now, current_run=None)
    )
    session.commit()
    return failed.rowcount == 1


def part_heartbeat(session: Session, audit_id: str, part: int, worker_id: str) -> bool:
    """Refresh the part's heartbeat (and its audit's); False if this worker no longer owns the part."""
    now = utcnow()
    res = session.execute(update(AuditPart).where(*_part_owned(audit_id, part, worker_id)).values(heartbeat_at=now))
    if res.rowcount == 1:
        session.execute(update(Audit).where(Audit.id == audit_id, Audit.status == "running").values(heartbeat_at=now))
    session.commit()
    return res.rowcount == 1


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
    res = session.execute(
        update(AuditPart)
        .where(*_part_owned(audit_id, part, worker_id))
        .values(current_run=current_run, current_epoch=epoch, heartbeat_at=now, updated_at=now)
    )
    if res.rowcount == 1:
        values: dict[str, Any] = dict(current_run=current_run, current_epoch=epoch, heartbeat_at=now, updated_at=now)
        if epochs is not None:
            values["epochs"] = epochs
        if runs_total is not None:
            values["runs_total"] = runs_total
        session.execute(update(Audit).where(Audit.id == audit_id, Audit.status == "running").values(**values))
    session.commit()
    return res.rowcount == 1


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
    res = session.execute(
        update(AuditPart)
        .where(*_part_owned(audit_id, part, worker_id))
        .values(status=status, error=error, finished_at=now, updated_at=now, current_run=None, current_epoch=None)
    )
    if res.rowcount != 1:
        session.rollback()
        return False
    if status == "failed":
        session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status.in_(("queued", "running")))
            .values(status="failed", error=error, finished_at=now, updated_at=now, current_run=None)
        )
    elif status == "cancelled":
        session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status == "running", Audit.cancel_requested.is_(True))
            .values(status="cancelled", error=error, finished_at=now, updated_at=now, current_run=None)
        )
    session.commit()
    return True


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
    unfinished = exists().where(AuditPart.audit_id == audit_id, AuditPart.status != "succeeded")
    res = session.execute(
        update(Audit)
        .where(
            Audit.id == audit_id,
            Audit.status == "running",
            Audit.claimed_by.is_(None),
            _has_parts(audit_id),
            ~unfinished,
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
    are sent again, and an audit whose parts all succeeded but whose report nobody assembles
    (the last part's worker died before claiming it, or the assembler died) is handed to a
    `kdaudit.assemble_audit` task."""
    cutoff = now - timedelta(seconds=stale_after)
    part_stale = (AuditPart.heartbeat_at.is_(None)) | (AuditPart.heartbeat_at < cutoff)
    stale = session.execute(
        select(AuditPart.audit_id, AuditPart.part, AuditPart.attempts)
        .join(Audit, Audit.id == AuditPart.audit_id)
        .where(AuditPart.status == "running", Audit.status == "running", part_stale)
    ).all()
    session.commit()
    for audit_id, part, attempts in stale:
        if attempts >= max_attempts:
            if _give_up_part(session, audit_id, part, attempts, stale_after):
                out.failed.append(audit_id)
            continue
        res = session.execute(
            update(AuditPart)
            .where(
                AuditPart.audit_id == audit_id,
                AuditPart.part == part,
                AuditPart.status == "running",
                AuditPart.attempts == attempts,
                part_stale,
            )
            .values(status="queued", claimed_by=None, heartbeat_at=None, current_epoch=None, updated_at=now)
        )
        session.commit()
        if res.rowcount == 1:
            out.parts.append((audit_id, part))

    if requeue_queued_after is not None:
        old = now - timedelta(seconds=requeue_queued_after)
        waiting = session.execute(
            select(AuditPart.audit_id, AuditPart.part)
            .join(Audit, Audit.id == AuditPart.audit_id)
            .where(AuditPart.status == "queued", Audit.status.in_(("queued", "running")), AuditPart.updated_at < old)
        ).all()
        session.commit()
        for audit_id, part in waiting:
            res = session.execute(
                update(AuditPart)
                .where(
                    AuditPart.audit_id == audit_id,
                    AuditPart.part == part,
                    AuditPart.status == "queued",
                    AuditPart.updated_at < old,
                )
                .values(updated_at=now)
            )
            session.commit()
            if res.rowcount == 1:
                out.parts.append((audit_id, part))

    audit_stale = (Audit.heartbeat_at.is_(None)) | (Audit.heartbeat_at < cutoff)
    has_parts = exists().where(AuditPart.audit_id == Audit.id)
    unfinished = exists().where(AuditPart.audit_id == Audit.id, AuditPart.status != "succeeded")
    done = session.execute(
        select(Audit.id, Audit.attempts, Audit.claimed_by).where(
            Audit.status == "running", audit_stale, has_parts, ~unfinished
        )
    ).all()
    session.commit()
    for audit_id, attempts, owner in done:
        cas = [Audit.id == audit_id, Audit.status == "running", Audit.attempts == attempts, audit_stale]
        if owner is None:  # the last part's worker died between its `succeeded` and its claim
            res = session.execute(update(Audit).where(*cas, Audit.claimed_by.is_(None)).values(heartbeat_at=now))
        elif attempts >= max_attempts:  # the assembler keeps dying
            res = session.execute(
                update(Audit)
                .where(*cas, Audit.claimed_by == owner)
                .values(**_gave_up(_give_up_message(attempts, stale_after), now))
            )
            session.commit()
            if res.rowcount == 1:
                out.failed.append(audit_id)
            continue
        else:  # the assembler vanished: release its claim for the next one
            res = session.execute(
                update(Audit)
                .where(*cas, Audit.claimed_by == owner)
                .values(claimed_by=None, heartbeat_at=now, attempts=Audit.attempts + 1, updated_at=now)
            )
        session.commit()
        if res.rowcount == 1:
            out.assemble.append(audit_id)
