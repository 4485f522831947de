"""What every worker job shares: the worker's id, the heartbeat thread, loading the audit's
teacher, storing a report, and ending an audit after an exception.

Why one module: the whole-audit job (`audit_job`), the split-audit part and assembly jobs
(`part_jobs`) follow the same claim -> run -> store/fail rules; writing those rules once keeps a
failure message or a lost-claim check from drifting between the two.
"""


from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from kdaudit.core.errors import CancelledError, CheckpointError, KdauditError
from kdaudit.store import migrate, repo
from kdaudit.store.db import session_factory
from kdaudit.store.files import FileStore
from kdaudit.store.remote_teachers import REMOTE_FORMAT, load_spec_doc
from kdaudit.store.settings import ServiceSettings, get_service_settings

log = logging.getLogger("kdaudit.worker")

_worker_id: tuple[int, str] | None = None


def worker_id() -> str:
    """Unique per process (host:pid:random), recomputed after a fork."""
    global _worker_id
    if _worker_id is None or _worker_id[0] != os.getpid():
        _worker_id = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _worker_id[1]


def open_store(settings: ServiceSettings | None, wid: str | None) -> tuple[ServiceSettings, str, Any]:
    """Every job starts the same way: resolve settings and worker id, migrate if allowed, open sessions."""
    settings = settings or get_service_settings()
    url = settings.resolved_database_url
    if settings.should_auto_migrate:
        migrate.upgrade(url)
    return settings, wid or worker_id(), session_factory(url)


class Heartbeat(threading.Thread):
    """Keeps `heartbeat_at` fresh while the engine trains; notices a lost claim.

    `beat(session) -> still owned` defaults to the whole audit's heartbeat; a part passes its own.
    """

    def __init__(
        self, settings: ServiceSettings, audit_id: str, wid: str, beat: Callable[[Any], bool] | None = None
    ) -> None:
        super().__init__(name=f"heartbeat-{audit_id}", daemon=True)
        self.settings, self.audit_id, self.wid = settings, audit_id, wid
        self.beat = beat or (lambda session: repo.heartbeat(session, audit_id, wid))
        self.stop = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        factory = session_factory(self.settings.resolved_database_url)
        while not self.stop.wait(self.settings.heartbeat_seconds):
            try:
                with factory() as session:
                    if not self.beat(session):
                        self.lost.set()
                        return
            except Exception:  # a DB blip must not kill the audit; the next beat retries
                log.warning("heartbeat for audit %s failed", self.audit_id, exc_info=True)




def teacher_loader(settings: ServiceSettings, teacher) -> Callable[[], Any]:
    """Check the audit's teacher is there (raises CheckpointError) and return a function loading it."""
    from kdaudit.models.checkpoints import load_teacher

    if teacher is None:
        raise CheckpointError("the audit's teacher no longer exists")
    files = FileStore(settings.resolved_storage_dir)
    if teacher.format == REMOTE_FORMAT:
        remote_spec = load_spec_doc(files, teacher.id)
        if remote_spec is None:
            raise CheckpointError("the remote teacher's settings are missing from the file store; register it again")

        def remote():
            from kdaudit.workers.remote_teacher import build_teacher

            # checked against remote_teacher_hosts now and on every connection (see workers/remote_teacher.py)
            return build_teacher(remote_spec, teacher.num_classes, settings.remote_teacher_hosts)

        return remote
    path = files.path_for(teacher.sha256)
    if not path.is_file():
        raise CheckpointError(f"teacher file {teacher.sha256[:12]}... is missing from the file store")

    def local():
        from kdaudit.store.crypto import keyring
        from kdaudit.store.sealed_files import plaintext

        # sealed at rest: decrypted into a private temp folder that is gone once the model is in memory
        with plaintext(files, teacher.sha256, keyring(settings)) as plain:
            return load_teacher(
                plain, teacher.architecture, teacher.num_classes, teacher.in_channels, fmt=teacher.format, settings=settings
            )

    return local


def close_model(model: Any) -> None:
    close = getattr(model, "close", None)  # a remote teacher's pooled connections
    if callable(close):
        close()


def store_report(session, settings, audit_id: str, wid: str, report, verb: str) -> str:
    """Store a finished audit's report (sealed at rest) unless another worker took the audit over meanwhile."""
    from kdaudit.store.reports import seal_report

    seal = functools.partial(seal_report, settings, audit_id)
    if repo.store_report(session, audit_id, wid, json.loads(report.to_json()), seal=seal):
        log.info("audit %s succeeded", audit_id)
        return "succeeded"
    log.warning("audit %s %s here but this worker no longer owns it; report dropped", audit_id, verb)
    return "skipped: lost claim"


def forget_if_deleted(session, settings, audit_id: str) -> None:
    """The owner deleted the audit while it ran (DELETE ...?cancel=true): remove the checkpoints
    this worker may have written after the delete removed the folder."""
    from kdaudit.store.lifecycle import checkpoint_dir

    if repo.get_audit(session, None, audit_id) is None:
        shutil.rmtree(checkpoint_dir(settings.data_dir, audit_id), ignore_errors=True)
        log.info("audit %s was deleted while it ran; its checkpoints are removed", audit_id)


def end_audit(session, settings, audit_id: str, wid: str, e: Exception, what: str) -> str:
    """Finish the audit after an exception: cancelled by its owner, or failed with one line."""
    session.rollback()
    if isinstance(e, CancelledError):
        repo.finish_audit(session, audit_id, wid, "cancelled", "cancelled by its owner")
        forget_if_deleted(session, settings, audit_id)
        log.info("audit %s cancelled", audit_id)
        return "cancelled"
    repo.finish_audit(session, audit_id, wid, "failed", failure_message(audit_id, what, e))
    return "failed"


def failure_message(audit_id: str, what: str, e: Exception) -> str:
    """The one-line message a failure leaves on the audit (a bug's traceback goes to the log)."""
    if isinstance(e, KdauditError):
        message = f"{e.context}: {e}"
        log.warning("audit %s%s failed: %s", audit_id, what, message)
        return message
    log.exception("audit %s%s crashed", audit_id, what)
    return f"internal error ({type(e).__name__}); see the worker log"


# ---------------------------------------------------------------- split audits
