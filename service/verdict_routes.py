"""Operator checks: `POST /v1/selftest` queues the bundled self-test recipe on a worker;
`POST /v1/compare` diffs two reports.

The self-test trains a tiny digits teacher and audits it (distill/selftest.py): about 5 s on
an idle 2-core machine, minutes on a busy one. It used to train in the API process for any
key; now only keys of tenants listed in `operator_tenants` may start it (403 otherwise), and a
worker runs it (workers/selftest_task.py), writing the outcome that `GET /v1/selftest/{id}` reads.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from kdaudit.distill.report import Report
from kdaudit.service.auth import current_tenant, operator_tenant
from kdaudit.service.problems import Problem
from kdaudit.service.routes import _errors
from kdaudit.store.models import Tenant

router = APIRouter(prefix="/v1", dependencies=[Depends(current_tenant)], tags=["operators"])
@router.post(
    "/selftest",
    status_code=202,
    summary="Queue the bundled self-test on a worker (operators only); poll the Location for the result",
    responses=_errors(_403="The key's tenant is not in operator_tenants", _503="The job queue is unreachable"),
)
async def start_selftest(
    request: Request, response: Response, _operator: Tenant = Depends(operator_tenant)
) -> dict[str, Any]:
    """Enqueue the self-test; a worker trains it, never this process. 202 with `Location`."""
    from kdaudit.store.models import new_id
    from kdaudit.workers.names import TASK_SELFTEST
    from kdaudit.workers.selftest_task import write_result

    run_id = new_id()
    storage = request.app.state.settings.resolved_storage_dir
    write_result(storage, run_id, {"id": run_id, "status": "queued"})
    try:
        await run_in_threadpool(request.app.state.celery.send_task, TASK_SELFTEST, args=[run_id])
    except Exception:
        raise Problem(503, "the job queue is unreachable; nothing was queued, try again", slug="broker-unavailable") from None
    response.headers["Location"] = f"/v1/selftest/{run_id}"
    return {"id": run_id, "status": "queued", "links": {"self": f"/v1/selftest/{run_id}"}}


@router.get(
    "/selftest/{run_id}",
    summary="A queued self-test: status, and its checks once it has run (operators only)",
    responses=_errors(_403="The key's tenant is not in operator_tenants", _404="No such self-test run"),
)
async def get_selftest(
    request: Request,
    run_id: str = Path(min_length=32, max_length=32, pattern="^[a-f0-9]{32}$"),
    _operator: Tenant = Depends(operator_tenant),
) -> dict[str, Any]:
    """`status`: queued, running, succeeded (with `result.passed` and `result.checks`) or failed."""
    import json

    from kdaudit.workers.selftest_task import result_path

    path = result_path(request.app.state.settings.resolved_storage_dir, run_id)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        raise Problem(404, f"no self-test run {run_id}", slug="not-found") from None


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
