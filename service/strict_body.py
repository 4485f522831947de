"""Strict types at the API edge: `"epochs": "1"` or `"epochs": true` is refused, not coerced.

FastAPI validates bodies in pydantic's lax mode, which reads `"1"` and `true` as the integer 1
(and, inside the free-form `schedule`/`kd`/`skeptical`/`datafree` objects, the engine's own
config would do the same). `strict_audit_body` validates the raw JSON again in strict JSON mode:
the top-level fields with `AuditCreate`, and each key of those objects with the type the
engine's config gives it (`AuditConfig`'s sub-models). JSON mode keeps what JSON cannot say
otherwise (arrays for tuples, strings for enums), so a well-typed body is never refused.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

#: free-form objects of AuditCreate -> the AuditConfig field whose model types their keys
_OBJECTS = ("schedule", "kd", "skeptical", "datafree")


@lru_cache(maxsize=64)
def _adapter(obj: str, key: str) -> TypeAdapter | None:
    from kdaudit.distill.config import AuditConfig

    model = AuditConfig.model_fields[obj].annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or key not in model.model_fields:
        return None  # an unknown key: the engine's config refuses it (extra="forbid") with its own message
    return TypeAdapter(model.model_fields[key].annotation)


def _errors(e: ValidationError, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return [{"loc": ["body", *prefix, *err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in e.errors(include_url=False, include_context=False, include_input=False)]  # fmt: skip


async def strict_audit_body(request: Request) -> None:
    """A dependency of POST /v1/audits: 422 (the usual validation problem) on any coercion."""
    from kdaudit.service.schemas import AuditCreate

    raw = await request.body()
    errors: list[dict[str, Any]] = []
    try:
        AuditCreate.model_validate_json(raw, strict=True)
    except ValidationError as e:
        errors += _errors(e)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for obj in _OBJECTS:
            given = doc.get(obj)
            if not isinstance(given, dict):
                continue
            for key, value in given.items():
                adapter = _adapter(obj, str(key))
                if adapter is None:
                    continue
                try:
                    adapter.validate_json(json.dumps(value), strict=True)
                except ValidationError as e:
                    errors += _errors(e, (obj, str(key)))
    if errors:
        raise RequestValidationError(errors)
