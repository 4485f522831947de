"""The orphan sweep: make sure no audit stays `running` without a live worker, or `queued`
without a task message. Imported by the workers (a thread in every worker process) and by the
API (a background task), so it must stay free of task code and torch.

Nothing here depends on a new message arriving: a worker SIGKILLed mid-audit leaves its
Redis message unacknowledged (redelivered only after the visibility timeout, hours), so the
sweep is what brings the audit back. Every sweeper does the same compare-and-set UPDATEs, so
any number of them can run at once.
"""

from __future__ import annotations

import logging

from celery import Celery

from kdaudit.store import lifecycle, repo
from kdaudit.store.db import session_factory
from kdaudit.store.files import FileStore
from kdaudit.store.settings import ServiceSettings
from kdaudit.workers.checkpoint_gc import sweep_checkpoints
from kdaudit.workers.names import TASK_ASSEMBLE, TASK_RUN_AUDIT, TASK_RUN_PART

log = logging.getLogger("kdaudit.sweep")


def sweep_once(celery: Celery, settings: ServiceSettings) -> repo.Sweep:
    """Requeue (or fail) orphaned running audits and parts, re-send lost queued ones, and hand
    split audits nobody assembles to an assembly task; returns what it did."""
    with session_factory(settings.resolved_database_url)() as session:
        result = repo.sweep_orphans(
            session,
            settings.stale_after_seconds,
            settings.max_attempts,
            requeue_queued_after=settings.requeue_queued_after_seconds,
        )
    for audit_id in result.failed:
        log.warning("audit %s failed: its worker vanished %d times (max_attempts)", audit_id, settings.max_attempts)
    for audit_id in result.requeued + result.redispatched:
        why = "its worker vanished (stale heartbeat)" if audit_id in result.requeued else "its task message was lost"
        log.warning("re-dispatching audit %s: %s", audit_id, why)
        celery.send_task(TASK_RUN_AUDIT, args=[audit_id])
    for audit_id, part in result.parts:
        log.warning("re-dispatching part %d of audit %s: its worker vanished or its message was lost", part, audit_id)
        celery.send_task(TASK_RUN_PART, args=[audit_id, part])
    for audit_id in result.assemble:
        log.warning("dispatching the assembly of audit %s: its parts all succeeded, nobody assembled it", audit_id)
        celery.send_task(TASK_ASSEMBLE, args=[audit_id])
    sweep_retention(settings)
    sweep_checkpoints(settings)  # failed/cancelled audits' checkpoints, after checkpoint_retention_seconds
    return result


def sweep_retention(settings: ServiceSettings) -> lifecycle.Retention:
    """Enforce the retention settings (teacher_retention_days, report_retention_days) and remove
    leftovers of deleted audits (see `kdaudit.store.lifecycle.sweep_retention`)."""
    with session_factory(settings.resolved_database_url)() as session:
        done = lifecycle.sweep_retention(
            session,
            FileStore(settings.resolved_storage_dir),
            settings.data_dir,
            settings.teacher_retention_days,
            settings.report_retention_days,
        )
    if done.teachers or done.audits or done.files:
        log.info("retention: deleted %d teacher(s), %d audit(s), %d unreferenced file(s)",
                 len(done.teachers), len(done.audits), len(done.files))  # fmt: skip
    return done
