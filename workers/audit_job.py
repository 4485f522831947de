"""The whole-audit job: claim the audit, run the engine, record runs/progress, store the report.

An audit of kind 'defend' (a defence comparison) is claimed the same way and handed to workers/defend_job.py."""

from __future__ import annotations

import logging
from typing import Any

from kdaudit.store import repo
from kdaudit.store.settings import ServiceSettings
from kdaudit.workers.job_support import (
    Heartbeat,
    close_model,
    end_audit,
    open_store,
    store_report,
    teacher_loader,
)

log = logging.getLogger("kdaudit.worker")


def execute_audit(audit_id: str, settings: ServiceSettings | None = None, wid: str | None = None) -> str:
    """Run one audit end to end. Returns the outcome ('succeeded', 'failed', 'skipped: ...')."""
    settings, wid, factory = open_store(settings, wid)

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

    beat = Heartbeat(settings, audit_id, wid)
    beat.start()
    try:
        with factory() as session:
            if audit.kind == "defend":  # a defence comparison (POST /v1/defences): same claim, other engine
                from kdaudit.workers.defend_job import run_defend

                return run_defend(session, settings, audit_id, wid, teacher, config_data, beat, recorded)
            return _run(session, settings, audit_id, wid, teacher, config_data, recorded, beat)
    finally:
        beat.stop.set()


def _run(session, settings, audit_id, wid, teacher, config_data, recorded, beat) -> str:
    try:
        from kdaudit.distill.config import AuditConfig
        from kdaudit.distill.report import RunRecord
        from kdaudit.distill.runner import plan_runs, run_audit

        config = AuditConfig.model_validate(config_data)
        load = teacher_loader(settings, teacher)
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
            close_model(model)
        return store_report(session, settings, audit_id, wid, report, "finished")
    except Exception as e:  # a bug's traceback goes to the worker log, not to the API
        return end_audit(session, settings, audit_id, wid, e, "")
