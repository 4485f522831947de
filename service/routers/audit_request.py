"""From an audit request to the stored audit configuration: the teacher's facts, the request's
fields, a remote teacher's threat model, validated as `kdaudit.distill.config.AuditConfig`.

A configuration the engine would refuse is a 422 here (with pydantic's errors listed), so that
nothing invalid is ever queued.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from kdaudit.service.problems import Problem
from kdaudit.service.remote_threat import apply_remote_threat
from kdaudit.service.schemas import AuditCreate
from kdaudit.store import remote_teachers as rt
from kdaudit.store.files import FileStore
from kdaudit.store.models import Teacher

#: request fields copied into the configuration as given (models as the fields the client set)
_PASSED_THROUGH = ("attacks", "students", "seeds", "base_seed", "fraction", "device", "kd", "skeptical", "datafree",
                   "threat", "sweep", "panel")  # fmt: skip


def build_config(body: AuditCreate, teacher: Teacher, files: FileStore | None = None) -> dict[str, Any]:
    """The JSON form of the AuditConfig this request asks for (422 when the engine would refuse it)."""
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.data import dataset_spec

    dataset = body.dataset or teacher.dataset
    spec = dataset_spec(dataset)
    if spec.num_classes != teacher.num_classes or spec.in_channels != teacher.in_channels:
        raise Problem(
            422,
            f"teacher {teacher.id} has {teacher.num_classes} classes and {teacher.in_channels} input channels; "
            f"dataset {dataset!r} has {spec.num_classes} and {spec.in_channels}",
            slug="validation-error",
        )
    kwargs: dict[str, Any] = {"teacher_arch": teacher.architecture, "dataset": dataset,
                              "teacher_input": teacher.preprocess or "dataset", "expected_accuracy": teacher.expected_accuracy}
    if body.expected_accuracy is not None:
        kwargs["expected_accuracy"] = body.expected_accuracy
    if body.force is not None:
        kwargs["force"] = body.force
    for name in _PASSED_THROUGH:
        value = getattr(body, name)
        if value is not None:
            kwargs[name] = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value
    schedule = dict(body.schedule or {})
    if body.epochs is not None:
        schedule["epochs"] = body.epochs
    if schedule:
        kwargs["schedule"] = schedule
    if teacher.format == rt.REMOTE_FORMAT and files is not None:
        apply_remote_threat(kwargs, teacher, files)
    try:
        return AuditConfig(**kwargs).model_dump(mode="json")
    except ValidationError as e:
        errors = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
            for err in e.errors()
        ]
        summary = "; ".join(f"{'.'.join(x['loc'])}: {x['msg']}" for x in errors[:5])
        raise Problem(422, f"invalid audit configuration: {summary}", slug="validation-error", errors=errors) from None
