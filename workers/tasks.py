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

import logging
import threading
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down

from kdaudit.store import migrate
from kdaudit.store.settings import ServiceSettings, get_service_settings
from kdaudit.workers.audit_job import execute_audit
from kdaudit.workers.job_support import worker_id
from kdaudit.workers.names import TASK_ASSEMBLE, TASK_RUN_AUDIT, TASK_RUN_PART
from kdaudit.workers.part_jobs import execute_assembly, execute_part
from kdaudit.workers.sweep import sweep_once

__all__ = ["execute_assembly", "execute_audit", "execute_part", "sweep_orphans", "worker_id"]

log = logging.getLogger("kdaudit.worker")


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
