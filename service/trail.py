"""Recording the access trail from a request: the tenant and key the auth dependency found,
the client's address and the request id. Only ids and names go in (never a key or content)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from kdaudit.store import events
from kdaudit.store.lifecycle import Actor


def actor(request: Request) -> Actor:
    """The acting API key of this request, with its address and request id."""
    return Actor(
        kind="api",
        key_id=getattr(request.state, "key_id", None),
        address=request.client.host if request.client else None,
        request_id=request.scope.get("state", {}).get("request_id"),
    )


def record(
    request: Request, session: Session, action: str, object_type: str, object_id: str, detail: dict[str, Any] | None = None
) -> None:
    """One trail event for this request (its own commit)."""
    who = actor(request)
    events.record(
        session,
        request.state.tenant_id,
        action,
        object_type,
        object_id,
        key_id=who.key_id,
        actor=who.kind,
        address=who.address,
        request_id=who.request_id,
        detail=detail,
    )
