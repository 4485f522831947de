"""API key management: names, expiry, last use, revocation by id (the key itself is never stored).

`authenticate` is the one lookup the API makes per request: the key's sha256 must match a row
that is neither revoked nor expired *now*, so a revoked or expired key is refused on its next
request (no grace period). `last_used_at` is written at most every `every` seconds per key (a
conditional UPDATE), so polling clients do not turn every GET into a write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from kdaudit.store import repo
from kdaudit.store.models import ApiKey, Tenant, utcnow


@dataclass(frozen=True)
class KeyUse:
    """Who a request is: the tenant and the key id (the id goes into the access trail)."""

    tenant: Tenant
    key_id: str


def active(now: datetime):
    """SQL condition: a key that may be used at `now`."""
    return ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)


def create_key(
    session: Session, tenant_name: str, name: str | None = None, expires_at: datetime | None = None
) -> tuple[str, ApiKey]:
    """A new key for `tenant_name` (created if new); the key is returned once, only its hash kept."""
    key, row = repo.create_api_key(session, tenant_name)
    if name is not None or expires_at is not None:
        row.name, row.expires_at = name, expires_at
        session.commit()
    return key, row


def authenticate(session: Session, key: str, every: float = 60.0) -> KeyUse | None:
    now = utcnow()
    row = session.execute(
        select(ApiKey.id, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == repo.hash_key(key), *active(now))
    ).first()
    if row is None:
        return None
    key_id, tenant = row
    stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - timedelta(seconds=every))
    session.execute(update(ApiKey).where(ApiKey.id == key_id, stale).values(last_used_at=now))
    session.commit()
    return KeyUse(tenant, key_id)


def list_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    q = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    return list(session.scalars(q).all())


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def get_key(session: Session, key_id: str, tenant_id: str | None = None) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        return None
    return row


def revoke_by_id(session: Session, key_id: str, tenant_id: str | None = None) -> ApiKey | None:
    """Revoke key `key_id` (of `tenant_id`, when given). Returns the row (revoked now or before),
    None if there is no such key (of that tenant)."""
    row = get_key(session, key_id, tenant_id)
    if row is None:
        return None
    session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
    session.commit()
    session.refresh(row)
    return row


def status(row: ApiKey, now: datetime | None = None) -> str:
    now = now or utcnow()
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"
