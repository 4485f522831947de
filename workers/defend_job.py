"""The defence-comparison job (an audit of kind 'defend', POST /v1/defences): load the owner's
teacher, run `build_matrix` (distill/defences/engine.py) with progress and cancellation, store
the `kdaudit.defences/v1` matrix sealed at rest like any report.

Called by the whole-audit job (workers/audit_job.py) once it has claimed the audit, so the claim,
heartbeat, cancel and failure rules are the audits' own (workers/job_support.py). Each finished
run is recorded under `<teacher>/<part>:<run key>` (the owner's and every nasty teacher's audits
reuse run keys); a redelivered comparison starts again (build_matrix has no resume).
"""

from __future__ import annotations

import logging
from typing import Any

from kdaudit.store import repo
from kdaudit.workers.job_support import close_model, end_audit, store_report, teacher_loader

log = logging.getLogger("kdaudit.worker")


def run_defend(session, settings, audit_id: str, wid: str, teacher, config_data: dict[str, Any], beat) -> str:
    try:
        from kdaudit.distill.defences.engine import DefendConfig, build_matrix
        from kdaudit.distill.runner import ProgressEvent, plan_runs

        config = DefendConfig.model_validate(config_data)
        audits = config.planned_audits(config.parsed())
        total = sum(len(plan_runs(a)) for configs in audits.values() for a in configs)
        repo.update_progress(session, audit_id, wid, current_run=None, epoch=None, epochs=None, runs_total=total)
        model = teacher_loader(settings, teacher)()
        parts: dict[str, int] = {}  # teacher key -> which of its audits is running

        def progress(key: str, ev) -> None:
            if not isinstance(ev, ProgressEvent):  # a nasty teacher's epoch (distill/train.py EpochReport)
                repo.update_progress(session, audit_id, wid, current_run=key, epoch=ev.epoch, epochs=ev.epochs)
                return
            if ev.kind == "run_started" and ev.run_index == 0:  # the next audit of this teacher begins
                parts[key] = parts.get(key, -1) + 1
            run = f"{key}/{parts.get(key, 0)}:{ev.run_key}"
            if ev.kind == "run_finished" and ev.record is not None:
                repo.record_run(session, audit_id, run, ev.record.model_dump(mode="json"))
            repo.update_progress(session, audit_id, wid, current_run=run, epoch=ev.epoch, epochs=ev.epochs)

        def should_cancel() -> bool:
            return beat.lost.is_set() or repo.should_stop(session, audit_id, wid)

        try:
            matrix = build_matrix(config, model, teacher.sha256, progress=progress, should_cancel=should_cancel,
                                  data_root=settings.datasets_dir)
        finally:
            close_model(model)
        return store_report(session, settings, audit_id, wid, matrix, "finished")
    except Exception as e:  # a bug's traceback goes to the worker log, not to the API
        return end_audit(session, settings, audit_id, wid, e, " (defence comparison)")
