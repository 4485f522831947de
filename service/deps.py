"""Shared FastAPI dependencies: settings, DB sessions, the Celery producer, the file store."""

from __future__ import annotations

from collections.abc import AsyncIterator

from celery import Celery
from fastapi import Request
from sqlalchemy.orm import Session

from kdaudit.store.files import FileStore
from kdaudit.store.settings import ServiceSettings

# Dependencies that do no I/O are `async def`: FastAPI runs sync ones in the threadpool, and a
# thread hop per dependency per request is what limits throughput under many concurrent polls.


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request. An *async* generator on purpose: its teardown (closing the
    session, which returns the pooled connection) runs on the event loop. A sync generator's
    teardown needs a threadpool thread, and under load every thread can be blocked waiting for
    a pooled connection that only such a teardown would return: a deadlock (fastapi#3205)."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_files(request: Request) -> FileStore:
    return request.app.state.files


_ALLOWED_QUERY: dict[int, frozenset[str]] = {}


async def reject_unknown_query(request: Request) -> None:
    """Refuse query parameters the operation does not declare (422 naming them): a typo such as
    `?limt=5` must not be silently ignored."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = _ALLOWED_QUERY.get(id(route))
    if allowed is None:
        names: set[str] = set()
        todo = [dependant]
        while todo:  # the route's own query parameters and those of its dependencies
            d = todo.pop()
            names.update(p.alias for p in d.query_params)
            todo.extend(d.dependencies)
        allowed = frozenset(names)
        _ALLOWED_QUERY[id(route)] = allowed
    unknown = sorted({k for k in request.query_params.keys() if k not in allowed})
    if unknown:
        from kdaudit.service.problems import Problem

        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        takes = ", ".join(sorted(allowed)) or "none"
        raise Problem(
            422,
            f"unknown query parameter(s) {shown}; this operation takes: {takes}",
            slug="validation-error",
            title="Invalid request",
        )
