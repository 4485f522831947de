"""Teachers: the uploaded (or remote) classifiers a tenant audits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kdaudit.store.models import Teacher
from kdaudit.store.repo.paging import page


def add_teacher(session: Session, tenant_id: str, **fields: Any) -> Teacher:
    teacher = Teacher(tenant_id=tenant_id, **fields)
    session.add(teacher)
    session.commit()
    return teacher


def get_teacher(session: Session, tenant_id: str | None, teacher_id: str) -> Teacher | None:
    """The teacher if it exists and belongs to `tenant_id` (None = any tenant, workers only)."""
    teacher = session.get(Teacher, teacher_id)
    if teacher is None or (tenant_id is not None and teacher.tenant_id != tenant_id):
        return None
    return teacher


def list_teachers(session: Session, tenant_id: str, limit: int, offset: int) -> tuple[list[Teacher], int]:
    q = select(Teacher).where(Teacher.tenant_id == tenant_id)
    return page(session, q, (Teacher.created_at.desc(), Teacher.id), limit, offset)
