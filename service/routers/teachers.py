"""/v1/teachers: upload a checkpoint or register a remote teacher, list, read, delete.

    POST   /v1/teachers                     multipart upload (service/routers/teacher_upload.py)
    POST   /v1/teachers/remote              a teacher served over HTTP (remote_registration.py)
    GET    /v1/teachers                     your teachers, newest first
    GET    /v1/teachers/{id}                one of them
    DELETE /v1/teachers/{id}[?cancel=true]  it, its audits, reports and bytes (204)
"""

from __future__ import annotations

import logging

from fastapi import Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from kdaudit.service import trail
from kdaudit.service.auth import current_tenant
from kdaudit.service.deps import get_files, get_session, get_settings
from kdaudit.service.routers.base import TeacherId, errors, release_db, v1_router
from kdaudit.service.routers.ownership import Cancel, delete_owned, owned_teacher
from kdaudit.service.routers.pagination import MAX_OFFSET, MAX_PAGE, page_fields
from kdaudit.service.routers.remote_registration import check_registration
from kdaudit.service.routers.teacher_upload import UPLOAD_DOC, receive_teacher_file
from kdaudit.service.schemas import RemoteTeacherCreate, TeacherList, TeacherOut
from kdaudit.store import lifecycle, repo
from kdaudit.store import remote_teachers as rt
from kdaudit.store.files import FileStore
from kdaudit.store.models import Teacher, Tenant, new_id
from kdaudit.store.settings import ServiceSettings

log = logging.getLogger("kdaudit.api")
router = v1_router()


@router.post(
    "/teachers",
    status_code=201,
    response_model=TeacherOut,
    openapi_extra=UPLOAD_DOC,
    responses=errors(
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
    fields = await receive_teacher_file(request, tenant.id, settings, files, session)
    teacher = repo.add_teacher(session, tenant.id, **fields)
    request.app.state.metrics.teachers_uploaded.inc()
    await run_in_threadpool(
        trail.record, request, session, "teacher.upload", "teacher", teacher.id, {"sha256": fields["sha256"]}
    )
    response.headers["Location"] = f"/v1/teachers/{teacher.id}"
    return TeacherOut.of(teacher)


@router.post(
    "/teachers/remote",
    status_code=201,
    response_model=TeacherOut,
    responses=errors(
        _400="The body is not JSON",
        _403="Remote teachers are disabled, or the URL's host is not allowed by remote_teacher_hosts "
        "(`setting` names it)",
        _413="Body over max_json_body_bytes",
    ),
)
@release_db
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
    reg = check_registration(body, settings)
    spec = reg.spec
    teacher_id = new_id()
    rt.save_spec(files, teacher_id, spec.model_dump(mode="json"))
    try:
        teacher = repo.add_teacher(
            session,
            tenant.id,
            id=teacher_id,
            sha256=rt.spec_sha256(reg.public_url, spec.response),
            filename=reg.public_url,
            architecture=reg.architecture,
            dataset=body.dataset,
            num_classes=reg.dataset.num_classes,
            in_channels=reg.dataset.in_channels,
            format=rt.REMOTE_FORMAT,
            parameters=0,
            size_bytes=0,
            preprocess=None if body.preprocess is None or body.preprocess.is_default else body.preprocess.model_dump(mode="json"),
            expected_accuracy=body.expected_accuracy,
        )
    except BaseException:
        files.delete_secret(rt.secret_name(teacher_id))
        raise
    log.info("remote teacher %s registered for tenant %s: %s (%s)", teacher.id, tenant.id, reg.public_url, spec.response)
    request.app.state.metrics.teachers_uploaded.inc()
    trail.record(request, session, "teacher.upload", "teacher", teacher.id, {"remote": True})
    response.headers["Location"] = f"/v1/teachers/{teacher.id}"
    return _teacher_out(teacher, files)


@router.get("/teachers", response_model=TeacherList, responses=errors())
@release_db
def list_teachers(
    request: Request,
    limit: int = Query(20, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    tenant: Tenant = Depends(current_tenant),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
) -> TeacherList:
    items, total = repo.list_teachers(session, tenant.id, limit, offset)
    return TeacherList(items=[_teacher_out(t, files) for t in items], **page_fields(request, total, limit, offset))


@router.get("/teachers/{teacher_id}", response_model=TeacherOut, responses=errors(_404="No such teacher (of yours)"))
@release_db
def get_teacher(
    teacher_id: TeacherId,
    request: Request,
    tenant: Tenant = Depends(current_tenant),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
):
    teacher = owned_teacher(session, tenant.id, teacher_id)
    out = _teacher_out(teacher, files)
    trail.record(request, session, "teacher.read", "teacher", teacher.id)
    return out


@router.delete(
    "/teachers/{teacher_id}",
    status_code=204,
    response_class=Response,
    responses=errors(_404="No such teacher (of yours)", _409="An audit of it is queued or running (`audits` lists them)"),
)
@release_db
def delete_teacher(
    teacher_id: TeacherId,
    request: Request,
    cancel: Cancel = False,
    tenant: Tenant = Depends(current_tenant),
    settings: ServiceSettings = Depends(get_settings),
    files: FileStore = Depends(get_files),
    session: Session = Depends(get_session),
) -> Response:
    """Delete a teacher with its audits and reports, its stored bytes (unless another teacher of
    any tenant has the same file) and a remote teacher's secrets. A tombstone (id, sha256, time,
    key id) is kept."""
    return delete_owned("teacher", teacher_id, lambda: lifecycle.delete_teacher(
        session, files, settings.data_dir, tenant.id, teacher_id, trail.actor(request), cancel=cancel
    ))  # fmt: skip


def _teacher_out(teacher: Teacher, files: FileStore) -> TeacherOut:
    """The teacher as the API shows it; a remote one with its public settings (never its secrets)."""
    doc = rt.load_spec_doc(files, teacher.id) if teacher.format == rt.REMOTE_FORMAT else None
    return TeacherOut.of(teacher, remote=rt.public_info(doc) if doc is not None else None)
