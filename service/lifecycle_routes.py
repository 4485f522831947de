"""Owners' control over their data: delete teachers and audits, read the access trail, list
and revoke their API keys (docs/security.md "Owners' data").

    DELETE /v1/teachers/{id}[?cancel=true]   the teacher, its audits, reports and bytes (204)
    DELETE /v1/audits/{id}[?cancel=true]     an audit, its report, runs, parts, checkpoints (204)
    GET    /v1/events                        the tenant's access trail, newest first
    GET    /v1/keys                          the tenant's API keys (ids, names, times; never a key)
    DELETE /v1/keys/{id}                     revoke one (401 from its next request here; within
                                             auth_cache_seconds in other API processes)

A delete of something with a queued or running audit is 409 naming the audits, unless
`cancel=true`: then the audits stop (their worker finds its row gone at the next epoch
boundary) and nothing of them is left behind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from kdaudit.service import trail
from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import get_files, get_session, get_settings, reject_unknown_query
from kdaudit.service.problems import Problem
from kdaudit.service.routes import AuditId, TeacherId, _errors, _page_fields, _release_db
from kdaudit.service.schemas import ID_PATTERN
from kdaudit.store import events, keys, lifecycle
from kdaudit.store.files import FileStore
from kdaudit.store.models import ApiKey, Event, Tenant
from kdaudit.store.settings import ServiceSettings

router = APIRouter(prefix="/v1", dependencies=[Depends(current_tenant), Depends(reject_unknown_query)])

Cancel = Annotated[
    bool, Query(description="Also cancel (stop) the queued or running audits this delete would remove; else 409.")
]
KeyId = Annotated[str, Path(description="API key id (from GET /v1/keys).", min_length=1, max_length=64, pattern=ID_PATTERN)]


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


def _active_problem(kind: str, obj_id: str, active: list[str]) -> Problem:
    shown = ", ".join(active[:10])
    return Problem(
        409,
        f"{kind} {obj_id} has {len(active)} queued or running audit(s) ({shown}); cancel them first or "
        "send ?cancel=true to stop them as part of the delete",
        slug="audits-active",
        audits=active,
    )


@router.delete(
    "/teachers/{teacher_id}",
    status_code=204,
    response_class=Response,
    responses=_errors(_404="No such teacher (of yours)", _409="An audit of it is queued or running (`audits` lists them)"),
)
@_release_db
def delete_teacher(
    teacher_id: TeacherId,
    request: Request,
    cancel: Cancel = False,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
) -> Response:
    """Delete a teacher with its audits and reports, its stored bytes (unless another teacher of
    any tenant has the same file) and a remote teacher's secrets. A tombstone (id, sha256, time,
    key id) is kept."""
    try:
        done = lifecycle.delete_teacher(
            session, files, settings.data_dir, tenant.id, teacher_id, trail.actor(request), cancel=cancel
        )
    except lifecycle.ActiveAudits as e:
        raise _active_problem("teacher", teacher_id, e.args[0]) from None
    if done is None:
        raise Problem(404, f"no teacher {teacher_id}", slug="not-found")
    return Response(status_code=204)


@router.delete(
    "/audits/{audit_id}",
    status_code=204,
    response_class=Response,
    responses=_errors(_404="No such audit (of yours)", _409="The audit is queued or running (send ?cancel=true)"),
)
@_release_db
def delete_audit(
    audit_id: AuditId,
    request: Request,
    cancel: Cancel = False,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
) -> Response:
    """Delete an audit with its report, runs, parts and checkpoints (a tombstone is kept)."""
    try:
        done = lifecycle.delete_audit(session, settings.data_dir, tenant.id, audit_id, trail.actor(request), cancel=cancel)
    except lifecycle.ActiveAudits as e:
        raise _active_problem("audit", audit_id, e.args[0]) from None
    if done is None:
        raise Problem(404, f"no audit {audit_id}", slug="not-found")
    return Response(status_code=204)


@router.get("/events", response_model=EventList, responses=_errors())
@_release_db
def list_events(
    request: Request,
    limit: int = Query(50, ge=1, le=100),
    offset: int = Query(0, ge=0, le=1_000_000),
    action: str | None = Query(None, pattern="^(" + "|".join(a.replace(".", r"\.") for a in events.ACTIONS) + ")$"),
    object_id: str | None = Query(None, min_length=1, max_length=64, pattern=ID_PATTERN),
    tenant: Tenant = Depends(current_tenant),
    session: Session = Depends(get_session),
) -> EventList:
    """Your access trail, newest first: uploads, downloads (reports, teacher metadata), deletes,
    key changes; who (key id), what, when and from which address."""
    items, total = events.list_events(session, tenant.id, limit, offset, action=action, object_id=object_id)
    return EventList(items=[EventOut.of(e) for e in items], **_page_fields(request, total, limit, offset))


@router.get("/keys", response_model=KeyList, responses=_errors())
@_release_db
def list_keys(
    request: Request, tenant: Tenant = Depends(current_tenant), session: Session = Depends(get_session)
) -> KeyList:
    """Your API keys (ids, names, creation, last use, expiry, revocation); never the keys themselves."""
    current = getattr(request.state, "key_id", None)
    return KeyList(items=[KeyOut.of(k, current) for k in keys.list_keys(session, tenant.id)])


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=_errors(_404="No such key (of yours)"))
@_release_db
def revoke_key(
    key_id: KeyId, request: Request, tenant: Tenant = Depends(current_tenant), session: Session = Depends(get_session)
) -> KeyOut:
    """Revoke one of your keys: refused (401) from its next request to this API process, and
    within `auth_cache_seconds` (2 s) by the others. Revoking the key you call with is allowed."""
    row = keys.get_key(session, key_id, tenant.id)
    if row is None:
        raise Problem(404, f"no key {key_id}", slug="not-found")
    was_active = row.revoked_at is None
    row = keys.revoke_by_id(session, key_id, tenant.id)
    assert row is not None
    cache = getattr(request.app.state, "key_cache", None)
    if cache is not None:  # refused from the next request in this process (others: within auth_cache_seconds)
        cache.forget_all()
    if was_active:
        trail.record(request, session, "key.revoke", "key", key_id, {"name": row.name, "prefix": row.prefix})
    return KeyOut.of(row, getattr(request.state, "key_id", None))
