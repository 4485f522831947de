"""/v1/events: the tenant's access trail (docs/security.md "Owners' data").

    GET /v1/events   uploads, downloads, deletes, key changes: who (key id), what, when, from where
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import get_session
from kdaudit.service.routers.base import errors, release_db, v1_router
from kdaudit.service.routers.pagination import MAX_OFFSET, MAX_PAGE, page_fields
from kdaudit.service.schemas import ID_PATTERN
from kdaudit.store import events
from kdaudit.store.models import Event, Tenant

router = v1_router()


class EventOut(BaseModel):
    id: int
    at: datetime
    action: str = Field(description="One of: " + ", ".join(events.ACTIONS))
    object_type: str
    object_id: str
    key_id: str | None = Field(description="The API key that acted; null for the operator CLI and retention.")
    actor: str = Field(description="api, cli or retention")
    address: str | None = Field(description="The client's address as the API saw it.")
    request_id: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, e: Event) -> EventOut:
        return cls(id=e.id, at=e.at, action=e.action, object_type=e.object_type, object_id=e.object_id, key_id=e.key_id,
                   actor=e.actor, address=e.address, request_id=e.request_id, detail=e.detail)  # fmt: skip


class EventList(BaseModel):
    items: list[EventOut]
    total: int
    limit: int
    offset: int
    next: str | None


@router.get("/events", response_model=EventList, responses=errors())
@release_db
def list_events(
    request: Request,
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    action: str | None = Query(None, pattern="^(" + "|".join(a.replace(".", r"\.") for a in events.ACTIONS) + ")$"),
    object_id: str | None = Query(None, min_length=1, max_length=64, pattern=ID_PATTERN),
    tenant: Tenant = Depends(current_tenant),
    session: Session = Depends(get_session),
) -> EventList:
    """Your access trail, newest first: uploads, downloads (reports, teacher metadata), deletes,
    key changes; who (key id), what, when and from which address."""
    items, total = events.list_events(session, tenant.id, limit, offset, action=action, object_id=object_id)
    return EventList(items=[EventOut.of(e) for e in items], **page_fields(request, total, limit, offset))
