"""The access trail: who did what to a tenant's teachers, audits, reports and keys, when, from where.

Written by the API (uploads, downloads of reports and teacher metadata, deletes, key changes),
the operator CLI and the retention sweep. An event holds ids, an action name, the acting key's
id, the client address and a few non-secret facts -- never a key, a remote teacher's headers or
URL query, or report content -- so the trail can be shown to the tenant as it is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kdaudit.store.models import Event, utcnow

#: every action the trail records (GET /v1/events?action= accepts these)
ACTIONS = (
    "teacher.upload",
    "teacher.read",
    "teacher.delete",
    "audit.delete",
    "report.download",
    "key.create",
    "key.revoke",
)


def record(
    session: Session,
    tenant_id: str,
    action: str,
    object_type: str,
    object_id: str,
    *,
    key_id: str | None = None,
    actor: str = "api",
    address: str | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
    commit: bool = True,
) -> Event:
    if action not in ACTIONS:
        raise ValueError(f"unknown trail action {action!r}")
    event = Event(
        tenant_id=tenant_id,
        at=utcnow(),
        action=action,
        object_type=object_type,
        object_id=object_id,
        key_id=key_id,
        actor=actor,
        address=(address or None) and address[:64],
        request_id=request_id,
        detail=detail,
    )
    session.add(event)
    if commit:
        session.commit()
    return event


def list_events(
    session: Session,
    tenant_id: str,
    limit: int,
    offset: int,
    action: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
) -> tuple[list[Event], int]:
    q = select(Event).where(Event.tenant_id == tenant_id)
    if action is not None:
        q = q.where(Event.action == action)
    if object_id is not None:
        q = q.where(Event.object_id == object_id)
    if since is not None:
        q = q.where(Event.at >= since)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    items = session.scalars(q.order_by(Event.at.desc(), Event.id.desc()).limit(limit).offset(offset)).all()
    return list(items), int(total)
