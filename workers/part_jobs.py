"""Split audits: one job per part (a set of seeds), and the assembly of the report.

The last part to finish claims the audit (`repo.claim_assembly`) and assembles the report in
place; the orphan sweep sends `execute_assembly` when that worker died first (see workers/tasks.py).
"""

from __future__ import annotations

import logging
from typing import Any

from kdaudit.core.errors import CancelledError
from kdaudit.store import repo
from kdaudit.store.settings import ServiceSettings
from kdaudit.workers.job_support import (
    Heartbeat,
    close_model,
    end_audit,
    failure_message,
    forget_if_deleted,
    open_store,
    store_report,
    teacher_loader,
)

log = logging.getLogger("kdaudit.worker")


def execute_part(
    audit_id: str, part: int, settings: ServiceSettings | None = None, wid: str | None = None
) -> str:
    """Run one part (a set of seeds) of a split audit; the last part to finish assembles the
    report. Returns 'part succeeded', 'succeeded' (this part also assembled the report),
    'failed', 'cancelled' or 'skipped: ...'."""
    settings, wid, factory = open_store(settings, wid)
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

    beat = Heartbeat(
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
        load = teacher_loader(settings, teacher)
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
            close_model(model)
    except CancelledError:
        session.rollback()
        repo.finish_part(session, audit_id, part, wid, "cancelled", "cancelled by its owner")
        forget_if_deleted(session, settings, audit_id)
        log.info("audit %s part %d stopped (cancelled, or the audit ended)", audit_id, part)
        return "cancelled"
    except Exception as e:
        session.rollback()
        repo.finish_part(session, audit_id, part, wid, "failed", failure_message(audit_id, what, e))
        return "failed"


def _assemble(session, settings, audit_id, wid, config, model, teacher_sha256) -> str:
    """Build and store the report of a split audit this worker has claimed (`claim_assembly`).

    Every run is recorded, so the engine trains nothing: it loads the data and assembles (the
    teacher's test-split answers are reused when this worker just ran a part with the same
    teacher object). Handles its own failures (on the audit)."""
    from kdaudit.distill.report import RunRecord
    from kdaudit.distill.runner import plan_runs, run_audit

    beat = Heartbeat(settings, audit_id, wid)
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
        return store_report(session, settings, audit_id, wid, report, "assembled")
    except Exception as e:
        return end_audit(session, settings, audit_id, wid, e, " (assembly)")
    finally:
        beat.stop.set()


def execute_assembly(audit_id: str, settings: ServiceSettings | None = None, wid: str | None = None) -> str:
    """Assemble a split audit whose parts all succeeded (sent by the orphan sweep when the last
    part's worker died before assembling). Idempotent: finds the report stored, or another
    assembler at work, and does nothing."""
    settings, wid, factory = open_store(settings, wid)
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
            model = teacher_loader(settings, teacher)()
        except Exception as e:
            session.rollback()
            repo.finish_audit(session, audit_id, wid, "failed", failure_message(audit_id, " (assembly)", e))
            return "failed"
        try:
            return _assemble(session, settings, audit_id, wid, config, model, teacher.sha256)
        finally:
            close_model(model)
