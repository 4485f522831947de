"""Operator checks: `GET /v1/selftest` runs the bundled self-test recipe; `POST /v1/compare` diffs two reports.

The self-test trains a tiny digits teacher and audits it (distill/selftest.py). It takes one
to two minutes on 2 CPU cores, longer than a request should hold a worker, so it runs in a
threadpool thread (the event loop stays free) and at most one runs per process: a second
request while one is running gets 409. It needs an API key like every /v1 route. Clients
should allow a timeout of several minutes.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from kdaudit.distill.report import Report
from kdaudit.service.auth import current_tenant
from kdaudit.service.problems import Problem

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
    summary="Run the bundled self-test (digits, 1-2 minutes on 2 CPU cores) and compare with expected ranges",
    responses={401: {"description": "Missing or invalid API key"}, 409: {"description": "A self-test is already running"}},
)
async def selftest() -> dict[str, Any]:
    """`passed` is true when every measured number lies in its stored range; `checks` lists each."""
    return await run_in_threadpool(_run_selftest)


class CompareBody(BaseModel):
    a: Report
    b: Report


@router.post(
    "/compare",
    summary="What changed between two kdaudit.report/v1 reports, flagging differences beyond seed noise",
    responses={401: {"description": "Missing or invalid API key"}, 422: {"description": "Not two reports"}},
)
def compare(body: CompareBody) -> dict[str, Any]:
    from kdaudit.distill.compare import compare_reports

    return compare_reports(body.a, body.b).to_dict()
