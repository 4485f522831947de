"""Deleting an owner's things, and the retention rules the periodic sweep enforces.

A delete is one transaction that removes the rows (the audits' runs, reports and parts go
with them by ON DELETE CASCADE), writes a tombstone per deleted teacher/audit (id, sha256,
when, by which key: enough to trace a report already downloaded) and one trail event; then,
once committed, the bytes: audit checkpoints, a remote teacher's secret file, and the
content-addressed teacher file when no teacher row of *any* tenant still names its sha256.

An audit still queued or running is refused (`ActiveAudits`) unless the caller asks to cancel:
then its rows go at once and its worker, which checks its audit row between epochs, finds it
gone and stops; checkpoints a worker writes after the delete are removed by the worker when it
stops and, failing that, by the sweep (`sweep_retention`: folders of audits that no longer exist).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kdaudit.store import events
from kdaudit.store.files import FileStore
from kdaudit.store.models import FINISHED, Audit, Teacher, Tombstone, utcnow

log = logging.getLogger("kdaudit.lifecycle")
ACTIVE = ("queued", "running")


class ActiveAudits(Exception):
    """The thing has queued or running audits (args[0]: their ids); pass cancel to stop them."""


@dataclass
class Actor:
    """Who deletes: an API key (with its request's address) or the operator CLI or retention."""

    kind: str = "api"
    key_id: str | None = None
    address: str | None = None
    request_id: str | None = None


@dataclass
class Deleted:
    teachers: list[str] = field(default_factory=list)
    audits: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)


def checkpoint_dir(data_dir: Path, audit_id: str) -> Path:
    """Where a worker keeps an audit's per-epoch checkpoints (see workers/tasks.py)."""
    return Path(data_dir) / "checkpoints" / audit_id


def delete_teacher(
    session: Session, files: FileStore, data_dir: Path, tenant_id: str, teacher_id: str, actor: Actor,
    cancel: bool = False,
) -> Deleted | None:  # fmt: skip
    """Delete a teacher of `tenant_id`, its audits and its bytes. None if there is no such teacher."""
    from kdaudit.store.remote_teachers import REMOTE_FORMAT, secret_name

    teacher = session.get(Teacher, teacher_id)
    if teacher is None or teacher.tenant_id != tenant_id:
        return None
    audits = session.execute(select(Audit.id, Audit.status).where(Audit.teacher_id == teacher_id)).all()
    _refuse_active([a for a, s in audits if s in ACTIVE], cancel)
    sha, remote = teacher.sha256, teacher.format == REMOTE_FORMAT
    now = utcnow()
    ids = [a for a, _ in audits]
    for audit_id in ids:
        session.add(_tombstone(audit_id, "audit", tenant_id, sha, teacher_id, actor, now))
    session.add(_tombstone(teacher_id, "teacher", tenant_id, sha, None, actor, now))
    session.execute(delete(Audit).where(Audit.teacher_id == teacher_id))
    session.execute(delete(Teacher).where(Teacher.id == teacher_id))
    _event(session, tenant_id, "teacher.delete", "teacher", teacher_id, actor,
           {"sha256": sha, "audits": ids, "cancelled": cancel})  # fmt: skip
    session.commit()
    out = Deleted(teachers=[teacher_id], audits=ids)
    for audit_id in ids:
        shutil.rmtree(checkpoint_dir(data_dir, audit_id), ignore_errors=True)
    if remote:
        files.delete_secret(secret_name(teacher_id))
    elif remove_unreferenced(session, files, sha):
        out.files_removed.append(sha)
    log.info("teacher %s of tenant %s deleted (%s) with %d audit(s)", teacher_id, tenant_id, actor.kind, len(ids))
    return out


def delete_audit(
    session: Session, data_dir: Path, tenant_id: str, audit_id: str, actor: Actor, cancel: bool = False
) -> Deleted | None:
    """Delete an audit of `tenant_id` with its report, runs, parts and checkpoints."""
    audit = session.get(Audit, audit_id)
    if audit is None or audit.tenant_id != tenant_id:
        return None
    _refuse_active([audit_id] if audit.status in ACTIVE else [], cancel)
    teacher = session.get(Teacher, audit.teacher_id)
    sha = teacher.sha256 if teacher is not None else None
    session.add(_tombstone(audit_id, "audit", tenant_id, sha, audit.teacher_id, actor, utcnow()))
    session.execute(delete(Audit).where(Audit.id == audit_id))
    _event(session, tenant_id, "audit.delete", "audit", audit_id, actor,
           {"teacher_id": audit.teacher_id, "status": audit.status, "cancelled": cancel and audit.status in ACTIVE})  # fmt: skip
    session.commit()
    shutil.rmtree(checkpoint_dir(data_dir, audit_id), ignore_errors=True)
    log.info("audit %s of tenant %s deleted (%s)", audit_id, tenant_id, actor.kind)
    return Deleted(audits=[audit_id])


def remove_unreferenced(session: Session, files: FileStore, sha256: str) -> bool:
    """Remove the stored file `sha256` if no teacher of any tenant names it. True if removed."""
    still = session.scalar(select(Teacher.id).where(Teacher.sha256 == sha256).limit(1))
    session.commit()
    if still is not None:
        return False
    path = files.path_for(sha256)
    existed = path.is_file()
    path.unlink(missing_ok=True)
    for parent in (path.parent, path.parent.parent):  # the ab/cd folders, when empty
        try:
            parent.rmdir()
        except OSError:
            break
    return existed


def list_tombstones(session: Session, tenant_id: str, limit: int = 100) -> list[Tombstone]:
    q = select(Tombstone).where(Tombstone.tenant_id == tenant_id).order_by(Tombstone.deleted_at.desc()).limit(limit)
    return list(session.scalars(q).all())


def _refuse_active(active: list[str], cancel: bool) -> None:
    if active and not cancel:
        raise ActiveAudits(active)


def _tombstone(obj_id, kind, tenant_id, sha, teacher_id, actor: Actor, now) -> Tombstone:
    return Tombstone(id=obj_id, kind=kind, tenant_id=tenant_id, sha256=sha, teacher_id=teacher_id, deleted_at=now,
                     deleted_by_key=actor.key_id, reason=actor.kind)  # fmt: skip


def _event(session: Session, tenant_id: str, action: str, otype: str, oid: str, actor: Actor, detail: dict) -> None:
    events.record(session, tenant_id, action, otype, oid, key_id=actor.key_id, actor=actor.kind,
                  address=actor.address, request_id=actor.request_id, detail=detail, commit=False)  # fmt: skip


# ---------------------------------------------------------------------- retention (the sweep)

#: stored files no teacher names are removed once older than this (a crash between a delete's
#: commit and its unlink); the grace covers an upload, which stores its file moments before
#: the teacher row names it
ORPHAN_FILE_GRACE_SECONDS = 3600.0
_last_file_scan = 0.0


@dataclass
class Retention:
    teachers: list[str] = field(default_factory=list)
    audits: list[str] = field(default_factory=list)
    checkpoint_dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def sweep_retention(
    session: Session, files: FileStore, data_dir: Path, teacher_days: float | None, report_days: float | None,
    file_scan_every: float = 3600.0,
) -> Retention:  # fmt: skip
    """Apply the retention settings: teachers uploaded more than `teacher_days` ago (with their
    audits), finished audits ended more than `report_days` ago; checkpoint folders of audits
    that no longer exist; and (at most every `file_scan_every` s) stored files no teacher names."""
    global _last_file_scan
    out = Retention()
    now = utcnow()
    actor = Actor(kind="retention")
    if teacher_days is not None:
        old = session.execute(
            select(Teacher.id, Teacher.tenant_id).where(Teacher.created_at < now - timedelta(days=teacher_days))
        ).all()
        session.commit()
        for teacher_id, tenant_id in old:
            done = delete_teacher(session, files, data_dir, tenant_id, teacher_id, actor, cancel=True)
            if done is not None:
                out.teachers.append(teacher_id)
    if report_days is not None:
        old = session.execute(
            select(Audit.id, Audit.tenant_id).where(
                Audit.status.in_(FINISHED), Audit.finished_at < now - timedelta(days=report_days)
            )
        ).all()
        session.commit()
        for audit_id, tenant_id in old:
            if delete_audit(session, data_dir, tenant_id, audit_id, actor) is not None:
                out.audits.append(audit_id)
    out.checkpoint_dirs = _orphan_checkpoints(session, data_dir)
    if time.monotonic() - _last_file_scan >= file_scan_every:
        _last_file_scan = time.monotonic()
        out.files = _orphan_files(session, files)
    return out


def _orphan_checkpoints(session: Session, data_dir: Path) -> list[str]:
    root = Path(data_dir) / "checkpoints"
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir()]
    if not names:
        return []
    known: set[str] = set()
    for start in range(0, len(names), 500):  # bounded IN lists
        known.update(session.scalars(select(Audit.id).where(Audit.id.in_(names[start : start + 500]))).all())
    session.commit()
    gone = [n for n in names if n not in known]
    for name in gone:
        shutil.rmtree(root / name, ignore_errors=True)
    return gone


def _orphan_files(session: Session, files: FileStore) -> list[str]:
    import re

    removed = []
    if not files.root.is_dir():
        return removed
    cutoff = time.time() - ORPHAN_FILE_GRACE_SECONDS
    sha = re.compile(r"^[0-9a-f]{64}$")
    for path in files.root.glob("??/??/*"):
        if sha.match(path.name) and path.stat().st_mtime < cutoff and remove_unreferenced(session, files, path.name):
            removed.append(path.name)
    return removed
