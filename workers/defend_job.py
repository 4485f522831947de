"""The defence-comparison job (an audit of kind 'defend', POST /v1/defences): load the owner's
teacher, run `build_matrix` (distill/defences/engine.py) with progress and cancellation, store
the `kdaudit.defences/v1` matrix sealed at rest like any report.

Called by the whole-audit job (workers/audit_job.py) once it has claimed the audit, so the claim,
heartbeat, cancel and failure rules are the audits' own (workers/job_support.py). Each finished
run is recorded under `<teacher>/<part>:<run key>` (the owner's and every nasty teacher's audits
reuse run keys). A redelivered comparison resumes: its recorded runs are not trained again, and
the nasty teachers and per-epoch cohort checkpoints of the earlier attempt are read back from
`<data_dir>/checkpoints/<audit id>/` (swept with the audits' checkpoints when it ends).
"""

from __future__ import annotations

import logging
from typing import Any

from kdaudit.store import repo
from kdaudit.workers.job_support import close_model, end_audit, store_report, teacher_loader

log = logging.getLogger("kdaudit.worker")


def run_defend(session, settings, audit_id: str, wid: str, teacher, config_data: dict[str, Any], beat,
               recorded: dict[str, dict] | None = None) -> str:  # fmt: skip
    try:
        from kdaudit.distill.defences.engine import DefendConfig, build_matrix
        from kdaudit.distill.report import RunRecord
        from kdaudit.distill.runner import ProgressEvent, plan_runs

        done: dict[str, dict[str, RunRecord]] = {}  # stage ("owner/0") -> run key -> record
        for key, record in (recorded or {}).items():
            stage, _, run_key = key.partition(":")
            done.setdefault(stage, {})[run_key] = RunRecord.model_validate(record)
        config = DefendConfig.model_validate(config_data)
        audits = config.planned_audits(config.parsed())
        total = sum(len(plan_runs(a)) for configs in audits.values() for a in configs)
        repo.update_progress(session, audit_id, wid, current_run=None, epoch=None, epochs=None, runs_total=total)
        model = teacher_loader(settings, teacher)()

        def progress(stage: str, ev) -> None:
            if not isinstance(ev, ProgressEvent):  # a nasty teacher's epoch (distill/train.py EpochReport)
                repo.update_progress(session, audit_id, wid, current_run=stage, epoch=ev.epoch, epochs=ev.epochs)
                return
            run = f"{stage}:{ev.run_key}"
            if ev.kind == "run_finished" and ev.record is not None:
                repo.record_run(session, audit_id, run, ev.record.model_dump(mode="json"))
            repo.update_progress(session, audit_id, wid, current_run=run, epoch=ev.epoch, epochs=ev.epochs)

        def should_cancel() -> bool:
            return beat.lost.is_set() or repo.should_stop(session, audit_id, wid)

        try:
            matrix = build_matrix(config, model, teacher.sha256, progress=progress, should_cancel=should_cancel,
                                  data_root=settings.datasets_dir, done_runs=done,
                                  resume_dir=settings.data_dir / "checkpoints" / audit_id)  # fmt: skip
        finally:
            close_model(model)
        return store_report(session, settings, audit_id, wid, matrix, "finished")
    except Exception as e:  # a bug's traceback goes to the worker log, not to the API
        return end_audit(session, settings, audit_id, wid, e, " (defence comparison)")
