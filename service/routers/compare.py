"""/v1/compare: what changed between two `kdaudit.report/v1` reports, flagging differences
beyond seed noise (distill/compare.py). Any key may call it; it reads nothing stored.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from kdaudit.distill.report import Report
from kdaudit.service.routers.base import errors, v1_router

router = v1_router(strict_query=False, tags=["operators"])


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
    responses=errors(_400="The body is not JSON", _422="Not two reports"),
)
def compare(body: CompareBody, strict: CompareBody = Depends(_strict_compare_body)) -> dict[str, Any]:
    from kdaudit.distill.compare import compare_reports

    return compare_reports(strict.a, strict.b).to_dict()
