"""The /v1 routes: teachers, audits, reports."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from pathlib import Path as FsPath
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from kdaudit.core.errors import CheckpointError, KdauditError
from kdaudit.service import trail
from kdaudit.service.auth import current_tenant
from kdaudit.service.contract_fields import CONTRACT_FIELDS, check_fits, contract_fields
from kdaudit.service.deps import get_celery, get_files, get_session, get_settings, reject_unknown_query
from kdaudit.service.limits import check_audit_plan, limit_problem
from kdaudit.service.problems import Problem
from kdaudit.service.quotas import check_audit_size, check_storage, tenant_compute_admission
from kdaudit.service.schemas import (
    ID_PATTERN,
    AuditCreate,
    AuditList,
    AuditOut,
    RemoteTeacherCreate,
    TeacherList,
    TeacherOut,
)
from kdaudit.service.strict_body import strict_audit_body
from kdaudit.store import remote_teachers as rt
from kdaudit.store import repo
from kdaudit.store.crypto import StorageKeyError, keyring
from kdaudit.store.files import FileStore
from kdaudit.store.models import Audit, Teacher, Tenant, new_id
from kdaudit.store.reports import open_report as keyring_open_report
from kdaudit.store.sealed_files import store_upload
from kdaudit.store.settings import ServiceSettings
from kdaudit.workers.app import TASK_RUN_AUDIT, TASK_RUN_PART

log = logging.getLogger("kdaudit.api")
router = APIRouter(prefix="/v1", dependencies=[Depends(current_tenant), Depends(reject_unknown_query)])

#: room for the multipart envelope and the small form fields around the file
FORM_OVERHEAD = 1 << 20
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,12}$")
_MAX_PAGE = 100
_MAX_OFFSET = 1_000_000

#: error statuses every /v1 operation can answer (documented as problem+json in OpenAPI)
_COMMON = {401: "Missing or invalid API key", 422: "Invalid request", 429: "Rate limit exceeded (`limit` names it)"}


def _errors(**extra: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses of one operation (bodies: problem+json)."""
    out: dict[int | str, dict[str, Any]] = {code: {"description": d} for code, d in _COMMON.items()}
    for code, description in extra.items():
        out[int(code.lstrip("_"))] = {"description": description}
    return out


AuditId = Annotated[
    str, Path(description="Audit id (from POST /v1/audits).", min_length=1, max_length=64, pattern=ID_PATTERN)
]
TeacherId = Annotated[
    str, Path(description="Teacher id (from POST /v1/teachers).", min_length=1, max_length=64, pattern=ID_PATTERN)
]


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


def _release_db(fn):
    """For sync routes: end the session's transaction before the route returns, so that its
    pooled connection is back in the pool while FastAPI serializes the response (that happens
    in another threadpool thread). Holding it across that wait lets a burst of requests
    deadlock: every thread waiting for a connection, every connection waiting for a thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        session = kwargs.get("session")
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            if session is not None:
                session.rollback()
            raise
        if session is not None:
            session.commit()
        return result

    return wrapper


def _page_fields(request: Request, total: int, limit: int, offset: int) -> dict:
    """The pagination fields shared by every list response."""
    return {"total": total, "limit": limit, "offset": offset, "next": _page_link(request, offset, limit, total)}


def _page_link(request: Request, offset: int, limit: int, total: int) -> str | None:
    if offset + limit >= total:
        return None
    u = request.url.include_query_params(offset=offset + limit, limit=limit)
    return f"{u.path}?{u.query}"


# ------------------------------------------------------------------ teachers

_UPLOAD_DOC: dict[str, Any] = {
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


@router.post(
    "/teachers",
    status_code=201,
    response_model=TeacherOut,
    openapi_extra=_UPLOAD_DOC,
    responses=_errors(
        _413="File over max_upload_bytes, or weights over max_parameters (`limit` names it)",
        _415="Not multipart/form-data",
        _400="The client disconnected during the upload",
    ),
)
async def upload_teacher(
    request: Request,
    response: Response,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
) -> TeacherOut:
    """Upload a teacher checkpoint (multipart). It is validated in a separate, resource-limited process."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise _too_large(limit)
    if declared and declared.isdigit():  # refuse before reading when the body alone would pass the quota
        await run_in_threadpool(_storage_ok, session, tenant.id, max(int(declared) - FORM_OVERHEAD, 0), settings)
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
            await run_in_threadpool(_storage_ok, session, tenant.id, size, settings)
            try:
                with request.app.state.loader_gate.slot(tenant.id):  # 429 when too many loader children run
                    info = await run_in_threadpool(_validate, tmp, arch, num_classes, in_channels, fmt, settings)
            except CheckpointError as e:
                limit = getattr(e, "limit", None)  # CheckpointLimitError (kept duck-typed: no torch import here)
                if isinstance(limit, str):
                    status = 413 if limit in ("max_upload_bytes", "max_parameters") else 422
                    raise limit_problem(
                        status, limit, getattr(e, "limit_value", 0), f"{e} ({limit})", requested=getattr(e, "requested", None)
                    ) from None
                raise Problem(422, str(e), slug="invalid-checkpoint", title="Invalid checkpoint") from None
            # sealed with the storage key (a thread: sealing hundreds of MiB must not block the loop)
            await run_in_threadpool(store_upload, files, tmp, sha, keyring(settings))
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        await form.close()

    teacher = repo.add_teacher(
        session,
        tenant.id,
        sha256=sha,
        filename=filename,
        architecture=arch,
        dataset=dataset,
        num_classes=num_classes,
        in_channels=in_channels,
        format=str(info.format),
        parameters=int(info.parameters),
        size_bytes=size,
        preprocess=None if contract.is_default else contract.model_dump(mode="json"),
        expected_accuracy=expected,
    )
    request.app.state.metrics.teachers_uploaded.inc()
    await run_in_threadpool(trail.record, request, session, "teacher.upload", "teacher", teacher.id, {"sha256": sha})
    response.headers["Location"] = f"/v1/teachers/{teacher.id}"
    return TeacherOut.of(teacher)


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


def _validate(path: FsPath, arch: str | None, num_classes: int, in_channels: int, fmt: str | None, settings: ServiceSettings):
    # parses the file in a separate, resource-limited process: never unpickle in the API process
    from kdaudit.models.checkpoints import validate_teacher_file

    return validate_teacher_file(path, arch, num_classes, in_channels, fmt=fmt, settings=settings)


# Forbidden in a remote teacher's `headers`: the HTTP client sets them, or they would let a
# tenant aim an allowed address at another virtual host.
_RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection",
                               "te", "trailer", "upgrade", "keep-alive", "proxy-authorization", "proxy-connection"})  # fmt: skip


def _host_problem(e: KdauditError) -> Problem:
    """A refused remote URL: 403 naming the setting when the allowlist refuses it, else 422."""
    if isinstance(e, rt.RemoteHostNotAllowed):
        return Problem(403, str(e), slug="remote-host-not-allowed", setting=rt.SETTING)
    return Problem(422, str(e), slug="invalid-remote-teacher", setting=rt.SETTING)


@router.post(
    "/teachers/remote",
    status_code=201,
    response_model=TeacherOut,
    responses=_errors(
        _400="The body is not JSON",
        _403="Remote teachers are disabled, or the URL's host is not allowed by remote_teacher_hosts "
        "(`setting` names it)",
        _413="Body over max_json_body_bytes",
    ),
)
@_release_db
def register_remote_teacher(
    body: RemoteTeacherCreate,
    request: Request,
    response: Response,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
) -> TeacherOut:
    """Register a teacher served over HTTP (no file). Its host must be in the server's
    `remote_teacher_hosts`; the endpoint is not contacted until an audit runs. Headers (API keys)
    and the URL's query string are stored as secrets and never returned."""
    entries = rt.parse_entries(settings.remote_teacher_hosts)
    if not entries:  # before anything else: a server without remote teachers says so, whatever the body
        raise _host_problem(rt.RemoteHostNotAllowed(rt.disabled_message()))
    from kdaudit.distill.data import dataset_spec
    from kdaudit.distill.remote import RemoteTeacherSpec

    headers = dict(body.headers or {})
    reserved = sorted(k for k in headers if k.lower() in _RESERVED_HEADERS)
    if reserved:
        raise Problem(422, f"headers may not set {', '.join(reserved)} (the HTTP client sets them)", slug="validation-error")
    knobs = {k: getattr(body, k) for k in ("timeout_s", "max_retries", "backoff_s", "concurrency", "max_batch")}
    try:
        spec = RemoteTeacherSpec(
            url=body.url, response=body.response, headers=headers, **{k: v for k, v in knobs.items() if v is not None}
        )
    except ValidationError as e:
        # the messages name the rule, never the value (no header value can leak here)
        msgs = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()[:5])
        raise Problem(422, f"invalid remote teacher: {msgs}", slug="validation-error") from None
    public_url = spec.public_url()
    if len(public_url) > 255:
        raise Problem(422, f"the URL without its query string is {len(public_url)} characters; at most 255", slug="validation-error")
    architecture = rt.REMOTE_ARCH
    if body.architecture is not None and body.architecture.strip().lower() != rt.REMOTE_ARCH:
        from kdaudit.models.registry import parse_arch

        try:
            architecture = parse_arch(body.architecture)
        except KdauditError as e:
            raise Problem(422, str(e), slug="validation-error") from None
    try:
        ds = dataset_spec(body.dataset)
    except KdauditError as e:
        raise Problem(422, str(e), slug="validation-error") from None
    if body.preprocess is not None:
        check_fits(body.preprocess, ds.in_channels)
    try:  # the allowlist, then every address the host resolves to (blocking DNS: this route runs in a thread)
        rt.check_url(spec.url, entries)
    except KdauditError as e:
        raise _host_problem(e) from None

    teacher_id = new_id()
    rt.save_spec(files, teacher_id, spec.model_dump(mode="json"))
    try:
        teacher = repo.add_teacher(
            session,
            tenant.id,
            id=teacher_id,
            sha256=rt.spec_sha256(public_url, spec.response),
            filename=public_url,
            architecture=architecture,
            dataset=body.dataset,
            num_classes=ds.num_classes,
            in_channels=ds.in_channels,
            format=rt.REMOTE_FORMAT,
            parameters=0,
            size_bytes=0,
            preprocess=None if body.preprocess is None or body.preprocess.is_default else body.preprocess.model_dump(mode="json"),
            expected_accuracy=body.expected_accuracy,
        )
    except BaseException:
        files.delete_secret(rt.secret_name(teacher_id))
        raise
    log.info("remote teacher %s registered for tenant %s: %s (%s)", teacher.id, tenant.id, public_url, spec.response)
    request.app.state.metrics.teachers_uploaded.inc()
    trail.record(request, session, "teacher.upload", "teacher", teacher.id, {"remote": True})
    response.headers["Location"] = f"/v1/teachers/{teacher.id}"
    return _teacher_out(teacher, files)


def _remote_doc(teacher: Teacher, files: FileStore) -> dict[str, Any] | None:
    """A remote teacher's full stored spec (secrets included: never send it), None otherwise."""
    if teacher.format != rt.REMOTE_FORMAT:
        return None
    return rt.load_spec_doc(files, teacher.id)


def _teacher_out(teacher: Teacher, files: FileStore) -> TeacherOut:
    doc = _remote_doc(teacher, files)
    return TeacherOut.of(teacher, remote=rt.public_info(doc) if doc is not None else None)


@router.get("/teachers", response_model=TeacherList, responses=_errors())
@_release_db
def list_teachers(
    request: Request,
    limit: int = Query(20, ge=1, le=_MAX_PAGE),
    offset: int = Query(0, ge=0, le=_MAX_OFFSET),
    tenant: Tenant = Depends(current_tenant),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
) -> TeacherList:
    items, total = repo.list_teachers(session, tenant.id, limit, offset)
    return TeacherList(items=[_teacher_out(t, files) for t in items], **_page_fields(request, total, limit, offset))


@router.get("/teachers/{teacher_id}", response_model=TeacherOut, responses=_errors(_404="No such teacher (of yours)"))
@_release_db
def get_teacher(
    teacher_id: TeacherId,
    request: Request,
    tenant: Tenant = Depends(current_tenant),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
):
    teacher = repo.get_teacher(session, tenant.id, teacher_id)
    if teacher is None:
        raise Problem(404, f"no teacher {teacher_id}", slug="not-found")
    out = _teacher_out(teacher, files)
    trail.record(request, session, "teacher.read", "teacher", teacher.id)
    return out


# ------------------------------------------------------------------ audits


def _audit_or_404(session: Session, tenant: Tenant, audit_id: str) -> Audit:
    audit = repo.get_audit(session, tenant.id, audit_id)
    if audit is None:
        raise Problem(404, f"no audit {audit_id}", slug="not-found")
    return audit


def report_body_or_409(session: Session, tenant: Tenant, audit_id: str, settings: ServiceSettings) -> dict:
    """The stored report of one of the tenant's audits: 404 if not theirs, 409 (with
    Retry-After while it still runs) until the audit has succeeded. Shared by JSON and HTML."""
    audit = _audit_or_404(session, tenant, audit_id)
    row = repo.get_report(session, audit.id) if audit.status == "succeeded" else None
    if row is None:
        finished = repo.is_finished(audit.status)
        headers = {} if finished else {"Retry-After": str(settings.retry_after_seconds)}
        why = f"the audit {audit.status}" + (f": {audit.error}" if audit.error else "")
        if not finished:
            why = f"the audit is {audit.status} ({audit.runs_done}/{audit.runs_total} runs done)"
        raise Problem(409, f"no report yet: {why}", slug="report-not-ready", headers=headers, audit_status=audit.status)
    try:
        return keyring_open_report(settings, audit.id, row.body)
    except StorageKeyError:  # the operator's keyring lacks the key that sealed it (see docs/security.md)
        log.error("report of audit %s cannot be opened with the configured storage keys", audit.id)
        raise Problem(500, "the stored report cannot be opened with the server's storage keys", slug="storage-key") from None


def _audit_response(response: Response, audit: Audit, settings: ServiceSettings) -> AuditOut:
    if not repo.is_finished(audit.status):
        response.headers["Retry-After"] = str(settings.retry_after_seconds)
    return AuditOut.of(audit)


#: the output policy an audit of a remote teacher takes by default: what its endpoint reveals
_REMOTE_OUTPUT = {"logits": "logits", "probabilities": "probs", "labels": "label"}


def _remote_threat(kwargs: dict[str, Any], teacher: Teacher, files: FileStore) -> None:
    """For a remote teacher: the threat model its endpoint implies, and attacks it cannot answer
    refused now (422) rather than after the worker has queried it."""
    doc = _remote_doc(teacher, files)
    if doc is None:
        raise Problem(422, f"teacher {teacher.id}'s remote settings are missing from the file store; register it again",
                      slug="invalid-remote-teacher")  # fmt: skip
    response = str(doc.get("response", "logits"))
    kwargs.setdefault("threat", {}).setdefault("output", _REMOTE_OUTPUT.get(response, "logits"))
    from kdaudit.distill.access import OutputPolicy, check_against_response

    for spec in [kwargs["threat"]["output"], *((kwargs.get("sweep") or {}).get("outputs") or [])]:
        try:  # refused now, before the worker sends the endpoint a single query
            check_against_response(OutputPolicy.parse(str(spec)), response)
        except KdauditError as e:
            raise Problem(422, str(e), slug="validation-error") from None
    for attack in kwargs.get("attacks") or ():
        if "zskt" in attack:
            raise Problem(
                422,
                f"{attack} is a grey-box attack: it needs the teacher's intermediate activations, and a remote "
                "teacher only returns output vectors; use datafree_dfme / datafree_dfad (and their _skeptical forms; black-box)",
                slug="validation-error",
            )
        if attack.startswith("datafree_") and response == "labels":
            raise Problem(
                422,
                f"{attack} needs a score for every class, and this remote teacher answers labels only",
                slug="validation-error",
            )


def _build_config(body: AuditCreate, teacher, files: FileStore | None = None) -> dict[str, Any]:
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
    for name in ("attacks", "students", "seeds", "base_seed", "fraction", "device", "kd", "skeptical", "datafree",
                 "threat", "sweep", "panel"):
        value = getattr(body, name)
        if value is not None:
            kwargs[name] = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value
    schedule = dict(body.schedule or {})
    if body.epochs is not None:
        schedule["epochs"] = body.epochs
    if schedule:
        kwargs["schedule"] = schedule
    if teacher.format == rt.REMOTE_FORMAT and files is not None:
        _remote_threat(kwargs, teacher, files)
    try:
        return AuditConfig(**kwargs).model_dump(mode="json")
    except ValidationError as e:
        errors = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
            for err in e.errors()
        ]
        summary = "; ".join(f"{'.'.join(x['loc'])}: {x['msg']}" for x in errors[:5])
        raise Problem(422, f"invalid audit configuration: {summary}", slug="validation-error", errors=errors) from None


@router.post(
    "/audits",
    status_code=202,
    response_model=AuditOut,
    responses=_errors(
        _400="The body is not JSON",
        _404="No such teacher (of yours)",
        _413="Body over max_json_body_bytes",
        _503="The job queue is unreachable; nothing was queued",
    ),
)
@_release_db
def submit_audit(
    body: AuditCreate,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(default=None, max_length=255, description="Replays return the same audit."),
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
    celery: Celery = Depends(get_celery),
    _strict: None = Depends(strict_audit_body),  # "epochs": "1" / true are refused, not coerced
) -> AuditOut:
    """Queue an audit of one of your teachers. Answers 202 with `Location` of the job."""
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs

    teacher = repo.get_teacher(session, tenant.id, body.teacher_id)
    if teacher is None:
        raise Problem(404, f"no teacher {body.teacher_id}", slug="not-found")
    config = _build_config(body, teacher, files)
    runs_total = len(plan_runs(AuditConfig.model_validate(config)))
    fingerprint = repo.request_fingerprint(body.model_dump(mode="json", exclude_none=True))
    replay = idempotency_key is not None and repo.get_by_idempotency_key(session, tenant.id, idempotency_key)
    admit = None
    if not replay:  # a replay returns the earlier audit even if limits changed since
        check_audit_plan(config, runs_total, settings)
        admit = tenant_compute_admission(tenant.id, check_audit_size(config, settings), settings)
    parts = repo.plan_parts(config, settings.audit_parts)  # None: one task runs the whole audit
    try:
        audit, created = repo.create_audit(
            session,
            tenant_id=tenant.id,
            teacher_id=teacher.id,
            config=config,
            runs_total=runs_total,
            epochs=config["schedule"]["epochs"],
            request_hash=fingerprint,
            idempotency_key=idempotency_key,
            max_active=settings.max_concurrent_audits_per_tenant,
            parts=parts,
            admit=admit,
        )
    except repo.ActiveLimit as e:
        active = e.args[0]
        raise limit_problem(
            429,
            "max_concurrent_audits_per_tenant",
            settings.max_concurrent_audits_per_tenant,
            f"you already have {active} audits queued or running, the limit is "
            f"{settings.max_concurrent_audits_per_tenant} (max_concurrent_audits_per_tenant); "
            "wait for one to finish or cancel one",
            requested=active + 1,
            headers={"Retry-After": str(settings.retry_after_seconds * 6)},
        ) from None
    except repo.IdempotencyConflict as e:
        raise Problem(
            422,
            f"Idempotency-Key {idempotency_key!r} was already used for a different request (audit {e})",
            slug="idempotency-key-reused",
        ) from None
    if created:
        try:
            if parts:  # split across workers: one task per part, the last to finish assembles
                for i in range(len(parts)):
                    celery.send_task(TASK_RUN_PART, args=[audit.id, i])
            else:
                celery.send_task(TASK_RUN_AUDIT, args=[audit.id])
        except Exception:
            log.exception("could not enqueue audit %s", audit.id)
            repo.delete_audit(session, audit.id)
            raise Problem(503, "the job queue is unreachable; nothing was queued, try again", slug="broker-unavailable") from None
        request.app.state.metrics.audits_submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return _audit_response(response, audit, settings)


@router.get("/audits", response_model=AuditList, responses=_errors())
@_release_db
def list_audits(
    request: Request,
    limit: int = Query(20, ge=1, le=_MAX_PAGE),
    offset: int = Query(0, ge=0, le=_MAX_OFFSET),
    status: str | None = Query(None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
    tenant: Tenant = Depends(current_tenant),
    session: Session = Depends(get_session),
) -> AuditList:
    """Your audits, newest first."""
    items, total = repo.list_audits(session, tenant.id, limit, offset, status)
    return AuditList(items=[AuditOut.of(a) for a in items], **_page_fields(request, total, limit, offset))


@router.get("/audits/{audit_id}", response_model=AuditOut, responses=_errors(_404="No such audit (of yours)"))
async def get_audit(audit_id: AuditId, request: Request, tenant: Tenant = Depends(current_tenant)) -> Response:
    """Status and progress; `Retry-After` is set until the audit has finished."""
    # The status poll is the hot path (many clients, often): one threadpool hop for the one row
    # (its own short session), and the body serialised once here -- returning the model would
    # make FastAPI validate it against response_model again in another thread.
    audit = await run_in_threadpool(_read_audit, request.app.state.sessions, tenant.id, audit_id)
    if audit is None:
        raise Problem(404, f"no audit {audit_id}", slug="not-found")
    retry = request.app.state.settings.retry_after_seconds
    headers = {} if repo.is_finished(audit.status) else {"Retry-After": str(retry)}
    return Response(AuditOut.of(audit).model_dump_json(), media_type="application/json", headers=headers)


def _read_audit(sessions, tenant_id: str, audit_id: str) -> Audit | None:
    with sessions() as session:
        audit = repo.get_audit(session, tenant_id, audit_id)
        session.commit()
        return audit


@router.get(
    "/audits/{audit_id}/report",
    responses={
        200: {
            "description": "The kdaudit.report/v1 document",
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
        },
        **_errors(_404="No such audit (of yours)", _409="The audit has not succeeded (yet)"),
    },
)
@_release_db
def get_report(
    audit_id: AuditId,
    request: Request,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
) -> Response:
    """The `kdaudit.report/v1` JSON; 409 until the audit has succeeded."""
    from fastapi.responses import JSONResponse

    body = report_body_or_409(session, tenant, audit_id, settings)
    trail.record(request, session, "report.download", "audit", audit_id, {"format": "json"})
    return JSONResponse(body)


@router.post(
    "/audits/{audit_id}/cancel",
    status_code=202,
    response_model=AuditOut,
    responses=_errors(_404="No such audit (of yours)", _409="The audit has already finished"),
)
@_release_db
def cancel_audit(
    audit_id: AuditId,
    response: Response,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    session: Session = Depends(get_session),
) -> AuditOut:
    """Cancel: a queued audit at once, a running one at its next epoch boundary."""
    audit = _audit_or_404(session, tenant, audit_id)
    if repo.is_finished(audit.status):
        raise Problem(409, f"the audit already {audit.status}", slug="already-finished", audit_status=audit.status)
    audit = repo.request_cancel(session, audit, settings.stale_after_seconds)
    return _audit_response(response, audit, settings)
