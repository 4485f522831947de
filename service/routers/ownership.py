"""A tenant's rows: "yours, or 404", and deleting one of them.

Another tenant's id answers exactly like an id that does not exist (404 `not-found`), so ids
cannot be probed across tenants. Every route that reads or deletes a row by id goes through
here, so that rule and its wording live in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Query, Response
from sqlalchemy.orm import Session

from kdaudit.service.problems import Problem
from kdaudit.store import lifecycle, repo
from kdaudit.store.models import Audit, Teacher

T = TypeVar("T")

#: the query flag of every delete that can remove running work
Cancel = Annotated[
    bool, Query(description="Also cancel (stop) the queued or running audits this delete would remove; else 409.")
]


def not_found(kind: str, obj_id: str) -> Problem:
    """The 404 for a `kind` (teacher, audit, key, ...) that is not there or not the caller's."""
    return Problem(404, f"no {kind} {obj_id}", slug="not-found")


def found_or_404(row: T | None, kind: str, obj_id: str) -> T:
    """`row` if a tenant-scoped lookup found it, else the 404 naming it."""
    if row is None:
        raise not_found(kind, obj_id)
    return row


def owned_teacher(session: Session, tenant_id: str, teacher_id: str) -> Teacher:
    return found_or_404(repo.get_teacher(session, tenant_id, teacher_id), "teacher", teacher_id)


def owned_audit(session: Session, tenant_id: str, audit_id: str) -> Audit:
    return found_or_404(repo.get_audit(session, tenant_id, audit_id), "audit", audit_id)


def delete_owned(kind: str, obj_id: str, delete: Callable[[], object | None]) -> Response:
    """Run a `kdaudit.store.lifecycle` delete of one of the tenant's rows: 204 when done, 404
    when it is not theirs (the delete returned None), 409 naming the audits still queued or
    running when the caller did not ask to cancel them."""
    try:
        done = delete()
    except lifecycle.ActiveAudits as e:
        raise _active_problem(kind, obj_id, e.args[0]) from None
    found_or_404(done, kind, obj_id)
    return Response(status_code=204)


def _active_problem(kind: str, obj_id: str, active: list[str]) -> Problem:
    shown = ", ".join(active[:10])
    return Problem(
        409,
        f"{kind} {obj_id} has {len(active)} queued or running audit(s) ({shown}); cancel them first or "
        "send ?cancel=true to stop them as part of the delete",
        slug="audits-active",
        audits=active,
    )
