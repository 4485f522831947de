"""/v1/selftest: the bundled self-test, queued on a worker (operators only).

    POST /v1/selftest        202 + Location; a worker trains and audits a tiny digits teacher
    GET  /v1/selftest/{id}   its status, and its checks once it has run

The self-test (distill/selftest.py) takes about 5 s on an idle 2-core machine, minutes on a
busy one. It used to train in the API process for any key; now only keys of tenants listed in
`operator_tenants` may start it (403 otherwise), and a worker runs it
(workers/selftest_task.py), writing the outcome that `GET /v1/selftest/{id}` reads.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from kdaudit.service.auth import operator_tenant
from kdaudit.service.problems import Problem
from kdaudit.service.routers.base import errors, v1_router
from kdaudit.service.routers.ownership import not_found
from kdaudit.store.models import Tenant

router = v1_router(strict_query=False, tags=["operators"])


@router.post(
    "/selftest",
    status_code=202,
    summary="Queue the bundled self-test on a worker (operators only); poll the Location for the result",
    responses=errors(_403="The key's tenant is not in operator_tenants", _503="The job queue is unreachable"),
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
    responses=errors(_403="The key's tenant is not in operator_tenants", _404="No such self-test run"),
)
async def get_selftest(
    request: Request,
    run_id: str = Path(min_length=32, max_length=32, pattern="^[a-f0-9]{32}$"),
    _operator: Tenant = Depends(operator_tenant),
) -> dict[str, Any]:
    """`status`: queued, running, succeeded (with `result.passed` and `result.checks`) or failed."""
    from kdaudit.workers.selftest_task import result_path

    path = result_path(request.app.state.settings.resolved_storage_dir, run_id)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        raise not_found("self-test run", run_id) from None
