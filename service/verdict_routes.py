"""Operator checks: `GET /v1/selftest` runs the bundled self-test recipe; `POST /v1/compare` diffs two reports.

The self-test trains a tiny digits teacher and audits it (distill/selftest.py): about 5 s on
an idle 2-core machine, but minutes when the CPU is shared with training workers (measured:
3-7 min under a concurrent audit). It runs synchronously in a threadpool thread (the event
loop stays free) and at most one runs per process: a second request while one is running
gets 409. It needs an API key like every /v1 route. Clients should allow a generous timeout.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from kdaudit.distill.report import Report
from kdaudit.service.auth import current_tenant
from kdaudit.service.problems import Problem
from kdaudit.service.routes import _errors

router = APIRouter(prefix="/v1", dependencies=[Depends(current_tenant)], tags=["operators"])
_selftest_lock = threading.Lock()


def _run_selftest() -> dict[str, Any]:
    from kdaudit.distill.selftest import run_selftest

    if not _selftest_lock.acquire(blocking=False):
        raise Problem(409, "a self-test is already running in this server process; try again when it ends", slug="selftest-running")
    try:
        return run_selftest(device="cpu").to_dict()
    finally:
        _selftest_lock.release()


@router.get(
    "/selftest",
    summary="Run the bundled self-test (digits, ~5 s on an idle 2-core CPU) and compare with expected ranges",
    responses=_errors(_409="A self-test is already running"),
)
async def selftest() -> dict[str, Any]:
    """`passed` is true when every measured number lies in its stored range; `checks` lists each."""
    return await run_in_threadpool(_run_selftest)


class CompareBody(BaseModel):
    a: Report
    b: Report


async def _strict_compare_body(request: Request) -> CompareBody:
    """Validate the body again in strict mode: lax mode would read `false` as the integer 0.

    FastAPI's own (lax) validation still runs first and documents the schema; this keeps what
    we accept equal to what the schema says (found by the schemathesis run).
    """
    try:
        return CompareBody.model_validate_json(await request.body(), strict=True)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None


@router.post(
    "/compare",
    summary="What changed between two kdaudit.report/v1 reports, flagging differences beyond seed noise",
    responses=_errors(_400="The body is not JSON", _422="Not two reports"),
)
def compare(body: CompareBody, strict: CompareBody = Depends(_strict_compare_body)) -> dict[str, Any]:
    from kdaudit.distill.compare import compare_reports

    return compare_reports(strict.a, strict.b).to_dict()
