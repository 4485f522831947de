"""Finished training runs of an audit: what a resumed or split audit does not train again."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kdaudit.store.models import Audit, Run, utcnow


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
