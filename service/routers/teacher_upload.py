"""Receiving a teacher checkpoint from a multipart upload: the form (and its OpenAPI
description), size limits enforced while the bytes arrive, the storage quota, the form
fields, and validation of the file in a separate, resource-limited process.

`receive_teacher_file` returns what the teachers router stores as the new teacher's row.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path as FsPath
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from kdaudit.core.errors import CheckpointError, KdauditError
from kdaudit.service.contract_fields import CONTRACT_FIELDS, check_fits, contract_fields
from kdaudit.service.limits import limit_problem
from kdaudit.service.problems import Problem
from kdaudit.service.quotas import check_storage
from kdaudit.store.crypto import keyring
from kdaudit.store.files import FileStore
from kdaudit.store.sealed_files import store_upload
from kdaudit.store.settings import ServiceSettings

#: room for the multipart envelope and the small form fields around the file
FORM_OVERHEAD = 1 << 20
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,12}$")

#: the form, for OpenAPI (the route reads the raw request so that it can limit the body as it arrives)
UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "dataset"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The checkpoint."},
                        "architecture": {"type": "string", "example": "resnet18",
                                         "description": "Required for weights (safetensors, state_dict); not for ONNX."},
                        "dataset": {
                            "type": "string",
                            "enum": ["digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse"],
                            "description": "Dataset the teacher classifies.",
                        },
                        "preprocess": {"type": "string", "example": "none",
                                       "description": "Input preset the teacher was trained with: dataset (default), none, "
                                       "pixels255, half, imagenet, cifar, cifar-kuangliu, cifar100, mnist."},
                        "mean": {"type": "string", "example": "0.4914,0.4822,0.4465", "description": "Explicit per-channel mean."},
                        "std": {"type": "string", "example": "0.2023,0.1994,0.2010", "description": "Explicit per-channel std."},
                        "pixel_scale": {"type": "number", "example": 255, "description": "Pixels in [0, pixel_scale] before mean/std."},
                        "expected_accuracy": {"type": "number", "description": "Its test accuracy in your pipeline, percent."},
                        "num_classes": {"type": "integer", "description": "Defaults to the dataset's."},
                        "format": {
                            "type": "string",
                            "description": "Checkpoint format; detected from the file when omitted.",
                        },
                    },
                }
            }
        },
    }
}


async def receive_teacher_file(
    request: Request, tenant_id: str, settings: ServiceSettings, files: FileStore, session: Session
) -> dict[str, Any]:
    """Read, check, validate and store (sealed) the uploaded checkpoint; the teacher row's fields.

    Refused early: a declared body over the limit (413) or the tenant's storage quota (413), and
    anything but multipart (415); then the body is cut off as soon as it passes the limit."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise _too_large(limit)
    if declared and declared.isdigit():  # refuse before reading when the body alone would pass the quota
        await run_in_threadpool(_storage_ok, session, tenant_id, max(int(declared) - FORM_OVERHEAD, 0), settings)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Problem(415, "send the teacher as multipart/form-data with a `file` part", slug="unsupported-media-type")
    limited = Request(request.scope, receive=_limited_receive(request.receive, limit + FORM_OVERHEAD))
    try:
        form = await limited.form(max_files=1, max_fields=16)
    except _TooLarge:
        raise _too_large(limit) from None
    except ClientDisconnect:
        raise Problem(400, "the client disconnected during the upload") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Problem(422, "the form needs a `file` part holding the checkpoint", slug="validation-error")
        fields = {k: form.get(k) for k in ("architecture", "dataset", "num_classes", "format", "in_channels")}
        if not isinstance(fields["dataset"], str) or not fields["dataset"].strip():
            raise Problem(422, "the form field `dataset` is required", slug="validation-error")
        arch, dataset, num_classes, in_channels, fmt = _teacher_fields(fields)
        contract, expected = contract_fields({k: form.get(k) for k in CONTRACT_FIELDS})
        check_fits(contract, in_channels)

        filename = FsPath(upload.filename or "teacher").name[:255] or "teacher"
        suffix = FsPath(filename).suffix.lower()
        tmp = files.new_temp(suffix=suffix if _SUFFIX.match(suffix) else "")
        try:
            sha, size = await _copy_limited(upload, tmp, limit)
            await run_in_threadpool(_storage_ok, session, tenant_id, size, settings)
            info = await _validate_in_child(request, tenant_id, tmp, arch, num_classes, in_channels, fmt, settings)
            # sealed with the storage key (a thread: sealing hundreds of MiB must not block the loop)
            await run_in_threadpool(store_upload, files, tmp, sha, keyring(settings))
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        await form.close()
    return {
        "sha256": sha,
        "filename": filename,
        "architecture": arch,
        "dataset": dataset,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "format": str(info.format),
        "parameters": int(info.parameters),
        "size_bytes": size,
        "preprocess": None if contract.is_default else contract.model_dump(mode="json"),
        "expected_accuracy": expected,
    }


class _TooLarge(Exception):
    pass


def _limited_receive(receive, limit: int):
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
        return message

    return wrapped


def _too_large(limit: int) -> Problem:
    return limit_problem(
        413,
        "max_upload_bytes",
        limit,
        f"the teacher file is larger than the limit of {limit} bytes (max_upload_bytes)",
        slug="upload-too-large",
        max_bytes=limit,
    )


def _storage_ok(session: Session, tenant_id: str, adding: int, settings: ServiceSettings) -> None:
    """The per-tenant storage quota (413 naming it); ends the read transaction either way."""
    try:
        check_storage(session, tenant_id, adding, settings)
    finally:
        session.commit()


def _teacher_fields(fields: dict[str, Any]) -> tuple[str | None, str, int, int, str | None]:
    from kdaudit.distill.data import dataset_spec
    from kdaudit.models.registry import parse_arch

    given = fields.get("architecture")
    try:  # optional: an ONNX file needs none (the loader child refuses weights without one)
        arch = parse_arch(given) if isinstance(given, str) and given.strip() else None
    except KdauditError as e:
        raise Problem(422, str(e), slug="validation-error") from None
    dataset = str(fields["dataset"]).strip().lower()
    if dataset in ("npz", "folder"):
        raise Problem(422, f"dataset {dataset!r} (a server-side path) is not available over the API", slug="validation-error")
    try:
        spec = dataset_spec(dataset)
    except KdauditError as e:
        raise Problem(422, str(e), slug="validation-error") from None
    num_classes = _int_field(fields.get("num_classes"), "num_classes", spec.num_classes)
    in_channels = _int_field(fields.get("in_channels"), "in_channels", spec.in_channels)
    if num_classes != spec.num_classes or in_channels != spec.in_channels:
        raise Problem(
            422,
            f"dataset {dataset!r} has {spec.num_classes} classes and {spec.in_channels} input channels, "
            f"but the form says num_classes={num_classes}, in_channels={in_channels}",
            slug="validation-error",
        )
    fmt = fields.get("format")
    fmt = str(fmt).strip().lower() if isinstance(fmt, str) and fmt.strip() else None
    return arch, dataset, num_classes, in_channels, fmt


def _int_field(value: Any, name: str, default: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        n = int(str(value).strip())
    except ValueError:
        raise Problem(422, f"`{name}` must be an integer, got {str(value)[:40]!r}", slug="validation-error") from None
    if not 1 <= n <= 100_000:
        raise Problem(422, f"`{name}` must be between 1 and 100000", slug="validation-error")
    return n


async def _copy_limited(upload: UploadFile, dest: FsPath, limit: int) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            h.update(chunk)
            out.write(chunk)
    if size == 0:
        raise Problem(422, "the uploaded file is empty", slug="invalid-checkpoint", title="Invalid checkpoint")
    return h.hexdigest(), size


async def _validate_in_child(
    request: Request, tenant_id: str, path: FsPath, arch: str | None, num_classes: int, in_channels: int,
    fmt: str | None, settings: ServiceSettings,
):  # fmt: skip
    """The checkpoint's format and size, parsed in a loader child (a slot of the loader gate:
    429 when too many run); a file over a limit is 413/422 naming the limit, a broken one 422."""
    try:
        with request.app.state.loader_gate.slot(tenant_id):  # 429 when too many loader children run
            return await run_in_threadpool(_validate, path, arch, num_classes, in_channels, fmt, settings)
    except CheckpointError as e:
        limit = getattr(e, "limit", None)  # CheckpointLimitError (kept duck-typed: no torch import here)
        if isinstance(limit, str):
            status = 413 if limit in ("max_upload_bytes", "max_parameters") else 422
            raise limit_problem(
                status, limit, getattr(e, "limit_value", 0), f"{e} ({limit})", requested=getattr(e, "requested", None)
            ) from None
        raise Problem(422, str(e), slug="invalid-checkpoint", title="Invalid checkpoint") from None


def _validate(path: FsPath, arch: str | None, num_classes: int, in_channels: int, fmt: str | None, settings: ServiceSettings):
    # parses the file in a separate, resource-limited process: never unpickle in the API process
    from kdaudit.models.checkpoints import validate_teacher_file

    return validate_teacher_file(path, arch, num_classes, in_channels, fmt=fmt, settings=settings)
