"""API keys: only their SHA-256 is stored, so a leaked database does not leak working keys."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kdaudit.store.models import ApiKey, Tenant, utcnow
from kdaudit.store.repo.tenants import get_or_create_tenant

KEY_PREFIX = "kda_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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
        update(ApiKey)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    return res.rowcount == 1
