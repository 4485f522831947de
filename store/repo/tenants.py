"""Tenants: the accounts that own keys, teachers and audits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kdaudit.store.models import Tenant


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
