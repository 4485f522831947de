"""What every /v1 router shares: how a router is made (auth, strict query), how an operation's
error answers are documented, the path id types, and the transaction rule for sync routes.

Written once here so that a router module holds only its resource's routes.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import reject_unknown_query
from kdaudit.service.schemas import ID_PATTERN

#: error statuses every /v1 operation can answer (documented as problem+json in OpenAPI)
_COMMON = {401: "Missing or invalid API key", 422: "Invalid request", 429: "Rate limit exceeded (`limit` names it)"}


def v1_router(*, strict_query: bool = True, **kwargs: Any) -> APIRouter:
    """A router under /v1: every route needs an API key and, unless `strict_query` is off,
    refuses query parameters it does not declare (a typo must not be silently ignored).

    `strict_query=False` is for the operator routers (self-test, compare), which never had the
    check; turning it on there would change what they accept."""
    dependencies = [Depends(current_tenant)]
    if strict_query:
        dependencies.append(Depends(reject_unknown_query))
    return APIRouter(prefix="/v1", dependencies=dependencies, **kwargs)


def errors(**extra: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses of one operation (bodies: problem+json).

    Keys are `_<status>` (keyword arguments cannot start with a digit): `errors(_404="...")`."""
    out: dict[int | str, dict[str, Any]] = {code: {"description": d} for code, d in _COMMON.items()}
    for code, description in extra.items():
        out[int(code.lstrip("_"))] = {"description": description}
    return out


AuditId = Annotated[
    str, Path(description="Audit id (from POST /v1/audits).", min_length=1, max_length=64, pattern=ID_PATTERN)
]
TeacherId = Annotated[
    str, Path(description="Teacher id (from POST /v1/teachers).", min_length=1, max_length=64, pattern=ID_PATTERN)
]


def release_db(fn):
    """For sync routes: end the session's transaction before the route returns, so that its
    pooled connection is back in the pool while FastAPI serializes the response (that happens
    in another threadpool thread). Holding it across that wait lets a burst of requests
    deadlock: every thread waiting for a connection, every connection waiting for a thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        session = kwargs.get("session")
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            if session is not None:
                session.rollback()
            raise
        if session is not None:
            session.commit()
        return result

    return wrapper
