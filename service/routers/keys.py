"""/v1/keys: the tenant's API keys (docs/security.md "Owners' data").

    GET    /v1/keys        ids, names, times; never a key
    DELETE /v1/keys/{id}   revoke one (401 from its next request here; within
                           auth_cache_seconds in other API processes)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from kdaudit.service import trail
from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import get_session
from kdaudit.service.routers.base import errors, release_db, v1_router
from kdaudit.service.routers.ownership import found_or_404
from kdaudit.service.schemas import ID_PATTERN
from kdaudit.store import keys
from kdaudit.store.models import ApiKey, Tenant

router = v1_router()

KeyId = Annotated[str, Path(description="API key id (from GET /v1/keys).", min_length=1, max_length=64, pattern=ID_PATTERN)]


class KeyOut(BaseModel):
    id: str
    name: str | None
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Last authenticated request (written at most once a minute).")
    expires_at: datetime | None
    revoked_at: datetime | None
    status: str = Field(description="active, expired or revoked")
    current: bool = Field(description="True for the key this request was made with.")

    @classmethod
    def of(cls, k: ApiKey, current_id: str | None) -> KeyOut:
        return cls(id=k.id, name=k.name, prefix=k.prefix, created_at=k.created_at, last_used_at=k.last_used_at,
                   expires_at=k.expires_at, revoked_at=k.revoked_at, status=keys.status(k), current=k.id == current_id)  # fmt: skip


class KeyList(BaseModel):
    items: list[KeyOut]


@router.get("/keys", response_model=KeyList, responses=errors())
@release_db
def list_keys(
    request: Request, tenant: Tenant = Depends(current_tenant), session: Session = Depends(get_session)
) -> KeyList:
    """Your API keys (ids, names, creation, last use, expiry, revocation); never the keys themselves."""
    current = getattr(request.state, "key_id", None)
    return KeyList(items=[KeyOut.of(k, current) for k in keys.list_keys(session, tenant.id)])


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=errors(_404="No such key (of yours)"))
@release_db
def revoke_key(
    key_id: KeyId, request: Request, tenant: Tenant = Depends(current_tenant), session: Session = Depends(get_session)
) -> KeyOut:
    """Revoke one of your keys: refused (401) from its next request to this API process, and
    within `auth_cache_seconds` (2 s) by the others. Revoking the key you call with is allowed."""
    row = found_or_404(keys.get_key(session, key_id, tenant.id), "key", key_id)
    was_active = row.revoked_at is None
    row = keys.revoke_by_id(session, key_id, tenant.id)
    assert row is not None
    cache = getattr(request.app.state, "key_cache", None)
    if cache is not None:  # refused from the next request in this process (others: within auth_cache_seconds)
        cache.forget_all()
    if was_active:
        trail.record(request, session, "key.revoke", "key", key_id, {"name": row.name, "prefix": row.prefix})
    return KeyOut.of(row, getattr(request.state, "key_id", None))
