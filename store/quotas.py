"""Reads behind the per-tenant quotas (service/quotas.py): stored bytes and active audits.

Kept out of store/repo.py (already the longest module); plain SELECTs, no writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kdaudit.store.models import Audit, Teacher

ACTIVE = ("queued", "running")


def tenant_storage_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's stored teacher files (each upload counted, as its own row)."""
    return int(session.scalar(select(func.coalesce(func.sum(Teacher.size_bytes), 0)).where(Teacher.tenant_id == tenant_id)) or 0)


def active_configs(session: Session, tenant_id: str) -> list[dict[str, Any]]:
    """Configurations of the tenant's queued and running audits."""
    q = select(Audit.config).where(Audit.tenant_id == tenant_id, Audit.status.in_(ACTIVE))
    return [c or {} for c in session.scalars(q).all()]
