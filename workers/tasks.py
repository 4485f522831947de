"""The audit task: claim the job, run the engine, write runs/progress/report to the DB.

Exactly-once *effect* on at-least-once delivery: the task first claims the audit with a
compare-and-set UPDATE (`status='queued'` -> `running`). A duplicate or redelivered
message finds it running on a live worker (fresh heartbeat) or finished, and does
nothing. If the worker that held it died (stale heartbeat), the message's redelivery -- or
the periodic orphan sweep every worker runs -- lets another worker take it over, and the
engine skips the runs already recorded (`done_runs`).

Split audits (`audit_parts` > 1): each part (a set of seeds) is its own task with the same
rules per part row (`execute_part`). A part records its runs as they finish, so a redelivered
part trains only what is not recorded. The part that finds every part succeeded when it ends
claims the audit (`repo.claim_assembly`, one compare-and-set) and assembles the report in
place -- the engine called with every run done trains nothing. Not a Celery chord: chords need
a result backend, which neither the embedded filesystem broker nor our Redis setup has
(`task_ignore_result`), and a chord's counter knows nothing of redeliveries or of parts the
sweep re-sends. The sweep hands an audit whose parts all succeeded but that nobody assembled
to `execute_assembly`.
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

from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down

from kdaudit.core.errors import CancelledError, CheckpointError, KdauditError
from kdaudit.store import migrate, repo
from kdaudit.store.db import session_factory
from kdaudit.store.files import FileStore
from kdaudit.store.remote_teachers import REMOTE_FORMAT, load_spec_doc
from kdaudit.store.settings import ServiceSettings, get_service_settings
from kdaudit.workers.names import TASK_ASSEMBLE, TASK_RUN_AUDIT, TASK_RUN_PART
from kdaudit.workers.sweep import sweep_once

log = logging.getLogger("kdaudit.worker")

_worker_id: tuple[int, str] | None = None


def worker_id() -> str:
    """Unique per process (host:pid:random), recomputed after a fork."""
    global _worker_id
    if _worker_id is None or _worker_id[0] != os.getpid():
        _worker_id = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _worker_id[1]


class _Heartbeat(threading.Thread):
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


def execute_audit(audit_id: str, settings: ServiceSettings | None = None, wid: str | None = None) -> str:
    """Run one audit end to end. Returns the outcome ('succeeded', 'failed', 'skipped: ...')."""
    settings = settings or get_service_settings()
    wid = wid or worker_id()
    url = settings.resolved_database_url
    if settings.should_auto_migrate:
        migrate.upgrade(url)
    factory = session_factory(url)

    with factory() as session:
        claim = repo.claim_audit(session, audit_id, wid, settings.stale_after_seconds, settings.max_attempts)
        if not claim.acquired:
            log.info("audit %s not run here: %s", audit_id, claim.reason)
            return f"skipped: {claim.reason}"
        log.info("audit %s %s by %s %s", audit_id, claim.outcome, wid, claim.reason)
        audit = repo.get_audit(session, None, audit_id)
        assert audit is not None
        teacher = repo.get_teacher(session, None, audit.teacher_id)
        config_data: dict[str, Any] = dict(audit.config)
        recorded = repo.done_runs(session, audit_id)
    if recorded:
        log.info(
            "audit %s resumes (attempt %d): %d finished run(s) kept, not trained again: %s",
            audit_id, audit.attempts, len(recorded), ", ".join(sorted(recorded)),
        )  # fmt: skip

    beat = _Heartbeat(settings, audit_id, wid)
    beat.start()
    try:
        with factory() as session:
            return _run(session, settings, audit_id, wid, teacher, config_data, recorded, beat)
    finally:
        beat.stop.set()


def _run(session, settings, audit_id, wid, teacher, config_data, recorded, beat) -> str:
    try:
        from kdaudit.distill.config import AuditConfig
        from kdaudit.distill.report import RunRecord
        from kdaudit.distill.runner import plan_runs, run_audit

        config = AuditConfig.model_validate(config_data)
        load = _teacher_loader(settings, teacher)
        done = {k: RunRecord.model_validate(v) for k, v in recorded.items()}
        total = len(plan_runs(config))
        repo.update_progress(session, audit_id, wid, current_run=None, epoch=None, epochs=None, runs_total=total)
        model = load()

        def progress(ev) -> None:
            if ev.kind == "run_started":
                log.info("audit %s run started: %s", audit_id, ev.run_key)
            if ev.kind == "run_finished" and ev.record is not None:
                repo.record_run(session, audit_id, ev.run_key, ev.record.model_dump(mode="json"))
                log.info("audit %s run finished: %s", audit_id, ev.run_key)
            repo.update_progress(
                session,
                audit_id,
                wid,
                current_run=ev.run_key,
                epoch=ev.epoch,
                epochs=ev.epochs,
                runs_total=ev.total_runs,
            )

        def should_cancel() -> bool:
            return beat.lost.is_set() or repo.should_stop(session, audit_id, wid)

        try:
            report = run_audit(
                config,
                model,
                teacher.sha256,
                progress=progress,
                should_cancel=should_cancel,
                done_runs=done,
                data_root=settings.datasets_dir,
                # per-epoch cohort checkpoints; on a volume shared by the workers a redelivered audit
                # resumes mid-seed, otherwise from its last finished run
                checkpoint_dir=settings.data_dir / "checkpoints" / audit_id,
            )
        finally:
            close = getattr(model, "close", None)  # a remote teacher's pooled connections
            if callable(close):
                close()
        return _store_report(session, settings, audit_id, wid, report, "finished")
    except Exception as e:  # a bug's traceback goes to the worker log, not to the API
        return _end_audit(session, settings, audit_id, wid, e, "")


def _teacher_loader(settings: ServiceSettings, teacher) -> Callable[[], Any]:
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


def _close(model: Any) -> None:
    close = getattr(model, "close", None)  # a remote teacher's pooled connections
    if callable(close):
        close()


def _store_report(session, settings, audit_id: str, wid: str, report, verb: str) -> str:
    """Store a finished audit's report (sealed at rest) unless another worker took the audit over meanwhile."""
    from kdaudit.store.reports import seal_report

    seal = functools.partial(seal_report, settings, audit_id)
    if repo.store_report(session, audit_id, wid, json.loads(report.to_json()), seal=seal):
        log.info("audit %s succeeded", audit_id)
        return "succeeded"
    log.warning("audit %s %s here but this worker no longer owns it; report dropped", audit_id, verb)
    return "skipped: lost claim"


def _forget_if_deleted(session, settings, audit_id: str) -> None:
    """The owner deleted the audit while it ran (DELETE ...?cancel=true): remove the checkpoints
    this worker may have written after the delete removed the folder."""
    from kdaudit.store.lifecycle import checkpoint_dir

    if repo.get_audit(session, None, audit_id) is None:
        shutil.rmtree(checkpoint_dir(settings.data_dir, audit_id), ignore_errors=True)
        log.info("audit %s was deleted while it ran; its checkpoints are removed", audit_id)


def _end_audit(session, settings, audit_id: str, wid: str, e: Exception, what: str) -> str:
    """Finish the audit after an exception: cancelled by its owner, or failed with one line."""
    session.rollback()
    if isinstance(e, CancelledError):
        repo.finish_audit(session, audit_id, wid, "cancelled", "cancelled by its owner")
        _forget_if_deleted(session, settings, audit_id)
        log.info("audit %s cancelled", audit_id)
        return "cancelled"
    repo.finish_audit(session, audit_id, wid, "failed", _failure(audit_id, what, e))
    return "failed"


def _failure(audit_id: str, what: str, e: Exception) -> str:
    """The one-line message a failure leaves on the audit (a bug's traceback goes to the log)."""
    if isinstance(e, KdauditError):
        message = f"{e.context}: {e}"
        log.warning("audit %s%s failed: %s", audit_id, what, message)
        return message
    log.exception("audit %s%s crashed", audit_id, what)
    return f"internal error ({type(e).__name__}); see the worker log"


# ---------------------------------------------------------------- split audits


def execute_part(
    audit_id: str, part: int, settings: ServiceSettings | None = None, wid: str | None = None
) -> str:
    """Run one part (a set of seeds) of a split audit; the last part to finish assembles the
    report. Returns 'part succeeded', 'succeeded' (this part also assembled the report),
    'failed', 'cancelled' or 'skipped: ...'."""
    settings = settings or get_service_settings()
    wid = wid or worker_id()
    url = settings.resolved_database_url
    if settings.should_auto_migrate:
        migrate.upgrade(url)
    factory = session_factory(url)
    with factory() as session:
        claim = repo.claim_part(session, audit_id, part, wid, settings.stale_after_seconds, settings.max_attempts)
        if not claim.acquired:
            log.info("audit %s part %d not run here: %s", audit_id, part, claim.reason)
            return f"skipped: {claim.reason}"
        log.info("audit %s part %d %s by %s %s", audit_id, part, claim.outcome, wid, claim.reason)
        audit = repo.get_audit(session, None, audit_id)
        row = repo.get_part(session, audit_id, part)
        assert audit is not None and row is not None
        seeds = {int(x) for x in row.seeds}
        teacher = repo.get_teacher(session, None, audit.teacher_id)
        config_data: dict[str, Any] = dict(audit.config)
        recorded = repo.done_runs(session, audit_id)
    if recorded:
        log.info("audit %s part %d starts with %d run(s) of the audit recorded; they are not trained again",
                 audit_id, part, len(recorded))  # fmt: skip

    beat = _Heartbeat(
        settings, f"{audit_id}/{part}", wid, beat=lambda session: repo.part_heartbeat(session, audit_id, part, wid)
    )
    beat.start()
    try:
        with factory() as session:
            return _run_part(session, settings, audit_id, part, seeds, wid, teacher, config_data, recorded, beat)
    finally:
        beat.stop.set()


def _run_part(session, settings, audit_id, part, seeds, wid, teacher, config_data, recorded, beat) -> str:
    what = f" part {part}"
    try:
        from kdaudit.distill.config import AuditConfig
        from kdaudit.distill.report import RunRecord
        from kdaudit.distill.runner import plan_runs, run_audit

        config = AuditConfig.model_validate(config_data)
        load = _teacher_loader(settings, teacher)
        done = {k: RunRecord.model_validate(v) for k, v in recorded.items()}
        total = len(plan_runs(config))
        repo.update_part_progress(session, audit_id, part, wid, current_run=None, epoch=None, epochs=None,
                                  runs_total=total)  # fmt: skip
        model = load()

        def progress(ev) -> None:
            if ev.kind == "run_started":
                log.info("audit %s part %d run started: %s", audit_id, part, ev.run_key)
            if ev.kind == "run_finished" and ev.record is not None:
                repo.record_run(session, audit_id, ev.run_key, ev.record.model_dump(mode="json"))
                log.info("audit %s part %d run finished: %s", audit_id, part, ev.run_key)
            repo.update_part_progress(session, audit_id, part, wid, current_run=ev.run_key, epoch=ev.epoch,
                                      epochs=ev.epochs, runs_total=ev.total_runs)  # fmt: skip

        def should_cancel() -> bool:
            return beat.lost.is_set() or repo.should_stop_part(session, audit_id, part, wid)

        try:
            run_audit(
                config,
                model,
                teacher.sha256,
                progress=progress,
                should_cancel=should_cancel,
                done_runs=done,
                data_root=settings.datasets_dir,
                checkpoint_dir=settings.data_dir / "checkpoints" / audit_id,  # per seed: parts never share a file
                only_seeds=seeds,
            )
            if not repo.finish_part(session, audit_id, part, wid, "succeeded"):
                log.warning("audit %s part %d finished here but this worker no longer owns it", audit_id, part)
                return "skipped: lost claim"
            log.info("audit %s part %d succeeded", audit_id, part)
            claim = repo.claim_assembly(session, audit_id, wid)  # the last part to finish assembles
            if not claim.acquired:
                log.info("audit %s part %d: report not assembled here: %s", audit_id, part, claim.reason)
                return "part succeeded"
            log.info("audit %s report assembled by %s (the last part to finish)", audit_id, wid)
            return _assemble(session, settings, audit_id, wid, config, model, teacher.sha256)
        finally:
            _close(model)
    except CancelledError:
        session.rollback()
        repo.finish_part(session, audit_id, part, wid, "cancelled", "cancelled by its owner")
        _forget_if_deleted(session, settings, audit_id)
        log.info("audit %s part %d stopped (cancelled, or the audit ended)", audit_id, part)
        return "cancelled"
    except Exception as e:
        session.rollback()
        repo.finish_part(session, audit_id, part, wid, "failed", _failure(audit_id, what, e))
        return "failed"


def _assemble(session, settings, audit_id, wid, config, model, teacher_sha256) -> str:
    """Build and store the report of a split audit this worker has claimed (`claim_assembly`).

    Every run is recorded, so the engine trains nothing: it loads the data and assembles (the
    teacher's test-split answers are reused when this worker just ran a part with the same
    teacher object). Handles its own failures (on the audit)."""
    from kdaudit.distill.report import RunRecord
    from kdaudit.distill.runner import plan_runs, run_audit

    beat = _Heartbeat(settings, audit_id, wid)
    beat.start()
    try:
        done = {k: RunRecord.model_validate(v) for k, v in repo.done_runs(session, audit_id).items()}
        missing = [r.key for r in plan_runs(config) if r.key not in done]
        if missing:  # should not happen (every part succeeded); train them rather than lose them
            log.warning("audit %s: %d run(s) missing after every part succeeded; training them now: %s",
                        audit_id, len(missing), ", ".join(missing))  # fmt: skip

        def progress(ev) -> None:
            if ev.kind == "run_finished" and ev.record is not None:
                repo.record_run(session, audit_id, ev.run_key, ev.record.model_dump(mode="json"))
            repo.update_progress(session, audit_id, wid, current_run=ev.run_key, epoch=ev.epoch, epochs=ev.epochs)

        report = run_audit(
            config,
            model,
            teacher_sha256,
            progress=progress,
            should_cancel=lambda: beat.lost.is_set() or repo.should_stop(session, audit_id, wid),
            done_runs=done,
            data_root=settings.datasets_dir,
            checkpoint_dir=settings.data_dir / "checkpoints" / audit_id,
        )
        return _store_report(session, settings, audit_id, wid, report, "assembled")
    except Exception as e:
        return _end_audit(session, settings, audit_id, wid, e, " (assembly)")
    finally:
        beat.stop.set()


def execute_assembly(audit_id: str, settings: ServiceSettings | None = None, wid: str | None = None) -> str:
    """Assemble a split audit whose parts all succeeded (sent by the orphan sweep when the last
    part's worker died before assembling). Idempotent: finds the report stored, or another
    assembler at work, and does nothing."""
    settings = settings or get_service_settings()
    wid = wid or worker_id()
    url = settings.resolved_database_url
    if settings.should_auto_migrate:
        migrate.upgrade(url)
    factory = session_factory(url)
    with factory() as session:
        claim = repo.claim_assembly(session, audit_id, wid)
        if not claim.acquired:
            log.info("audit %s not assembled here: %s", audit_id, claim.reason)
            return f"skipped: {claim.reason}"
        log.info("audit %s report assembled by %s", audit_id, wid)
        audit = repo.get_audit(session, None, audit_id)
        assert audit is not None
        teacher = repo.get_teacher(session, None, audit.teacher_id)
        config_data: dict[str, Any] = dict(audit.config)
    with factory() as session:
        try:
            from kdaudit.distill.config import AuditConfig

            config = AuditConfig.model_validate(config_data)
            model = _teacher_loader(settings, teacher)()
        except Exception as e:
            session.rollback()
            repo.finish_audit(session, audit_id, wid, "failed", _failure(audit_id, " (assembly)", e))
            return "failed"
        try:
            return _assemble(session, settings, audit_id, wid, config, model, teacher.sha256)
        finally:
            _close(model)


@shared_task(name=TASK_RUN_AUDIT, bind=True, acks_late=True, ignore_result=True)
def run_audit_task(self, audit_id: str) -> str:
    return execute_audit(str(audit_id))


@shared_task(name=TASK_RUN_PART, bind=True, acks_late=True, ignore_result=True)
def run_audit_part_task(self, audit_id: str, part: int) -> str:
    return execute_part(str(audit_id), int(part))


@shared_task(name=TASK_ASSEMBLE, bind=True, acks_late=True, ignore_result=True)
def assemble_audit_task(self, audit_id: str) -> str:
    return execute_assembly(str(audit_id))


# ---------------------------------------------------------------- orphan sweep

_sweeper_stop = threading.Event()


def sweep_orphans(celery, settings: ServiceSettings) -> list[str]:
    """One sweep (see `kdaudit.workers.sweep`); returns the ids it re-dispatched."""
    result = sweep_once(celery, settings)
    return result.requeued + result.redispatched + [a for a, _ in result.parts] + result.assemble


@worker_ready.connect
def _on_worker_ready(sender=None, **_: Any) -> None:
    settings = get_service_settings()
    if settings.should_auto_migrate:
        migrate.upgrade(settings.resolved_database_url)
    celery = sender.app if sender is not None else None
    if celery is None:
        return

    def loop() -> None:
        # runs beside the task (a thread), so a busy worker still rescues other workers' audits
        while True:
            try:
                sweep_orphans(celery, settings)
            except Exception:
                log.warning("orphan sweep failed", exc_info=True)
            if _sweeper_stop.wait(settings.sweep_interval):
                return

    threading.Thread(target=loop, name="kdaudit-orphan-sweep", daemon=True).start()


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    _sweeper_stop.set()
