"""From an audit request to the stored audit configuration: the teacher's facts, the request's
fields, a remote teacher's threat model, validated as `kdaudit.distill.config.AuditConfig`.

A configuration the engine would refuse is a 422 here (with pydantic's errors listed), so that
nothing invalid is ever queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kdaudit.core.errors import KdauditError
from kdaudit.service.problems import Problem
from kdaudit.service.remote_threat import apply_remote_threat
from kdaudit.service.schemas import AuditCreate
from kdaudit.store import remote_teachers as rt
from kdaudit.store.files import FileStore
from kdaudit.store.models import Teacher

#: request fields copied into the configuration as given (models as the fields the client set)
_PASSED_THROUGH = ("attacks", "students", "seeds", "base_seed", "fraction", "device", "kd", "skeptical", "datafree",
                   "threat", "sweep", "panel")  # fmt: skip


def build_config(body: AuditCreate, teacher: Teacher, files: FileStore | None = None,
                 folder_root: Path | None = None) -> dict[str, Any]:
    """The JSON form of the AuditConfig this request asks for (422 when the engine would refuse it).
    `folder_root` is the operator's `folder_datasets_dir`, where `dataset_name` is looked up."""
    from kdaudit.distill.config import AuditConfig

    dataset = body.dataset or teacher.dataset
    dataset_path, spec = _dataset(body, dataset, folder_root)
    if spec.num_classes != teacher.num_classes or spec.in_channels != teacher.in_channels:
        raise Problem(
            422,
            f"teacher {teacher.id} has {teacher.num_classes} classes and {teacher.in_channels} input channels; "
            f"dataset {dataset!r} has {spec.num_classes} and {spec.in_channels}",
            slug="validation-error",
        )
    kwargs: dict[str, Any] = {"teacher_arch": teacher.architecture, "dataset": dataset, "dataset_path": dataset_path,
                              "image_size": body.image_size,
                              "teacher_input": teacher.preprocess or "dataset", "expected_accuracy": teacher.expected_accuracy}
    if body.expected_accuracy is not None:
        kwargs["expected_accuracy"] = body.expected_accuracy
    if body.force is not None:
        kwargs["force"] = body.force
    kwargs["label_smoothing"] = body.label_smoothing  # null is meaningful here: no label-smoothing baseline
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


def _dataset(body: AuditCreate, dataset: str, folder_root: Path | None) -> tuple[str | None, Any]:
    """(dataset_path, DatasetSpec) of the request's dataset: an image folder only by its name under
    the operator's root (distill/folder_data.py `named_folder`), never a path the tenant gives."""
    from kdaudit.distill.data import dataset_spec
    from kdaudit.distill.folder_data import named_folder

    if dataset == "folder" and body.dataset_name is None:
        raise Problem(422, "dataset 'folder' needs `dataset_name`: one of the server's image-folder datasets",
                      slug="validation-error")
    if dataset != "folder" and (body.dataset_name is not None or body.image_size is not None):
        raise Problem(422, "`dataset_name` and `image_size` are for dataset 'folder'", slug="validation-error")
    try:
        path = str(named_folder(folder_root, body.dataset_name)) if body.dataset_name is not None else None
        return path, dataset_spec(dataset, path, body.image_size)
    except KdauditError as e:  # the operator's folder is named as the setting, not as its path
        detail = str(e).replace(str(folder_root), "<folder_datasets_dir>") if folder_root else str(e)
        raise Problem(422, detail, slug="validation-error") from None
