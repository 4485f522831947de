"""Paging of list responses: the bounds of `limit`/`offset` and the fields every list carries."""

from __future__ import annotations

from fastapi import Request

#: the largest page a list answers
MAX_PAGE = 100
#: the furthest a list may be skipped into (bounds the database's work for a deep offset)
MAX_OFFSET = 1_000_000


def page_fields(request: Request, total: int, limit: int, offset: int) -> dict:
    """The pagination fields shared by every list response (`next`: the following page's link)."""
    return {"total": total, "limit": limit, "offset": offset, "next": _next_link(request, offset, limit, total)}


def _next_link(request: Request, offset: int, limit: int, total: int) -> str | None:
    if offset + limit >= total:
        return None
    u = request.url.include_query_params(offset=offset + limit, limit=limit)
    return f"{u.path}?{u.query}"
