"""One page of a tenant's list, with the total the API reports next to it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session


def page(
    session: Session, query: Select[Any], order_by: tuple[Any, ...], limit: int, offset: int
) -> tuple[list[Any], int]:
    """(rows `offset`..`offset + limit` of `query` in `order_by` order, how many rows it has)."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(*order_by).limit(limit).offset(offset)).all()
    return list(items), total
