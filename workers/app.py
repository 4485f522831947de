"""The Celery application. Importing this module is cheap: it does not import task code.

`celery -A kdaudit.workers.app worker` finds `app` here; the API process builds its own
app with `make_celery(settings)` and enqueues by task *name* (`TASK_RUN_AUDIT`, or one
`TASK_RUN_PART` per part of a split audit), so it never imports `kdaudit.workers.tasks` (or torch).

No result backend (`task_ignore_result`): the database is the only state. That is also why a
split audit is not a Celery chord -- a chord needs a result backend (Celery refuses to start
one without: NotImplementedError) -- and is assembled by its last part instead (store/repo.py
`claim_assembly`).

Brokers: `KDAUDIT_BROKER_URL` (e.g. redis://) in production; unset = embedded mode, a
filesystem broker under `<data_dir>/broker` shared by the API and the worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from kdaudit.core.settings import Settings
from kdaudit.store.settings import ServiceSettings, coerce_settings
from kdaudit.workers.names import TASK_ASSEMBLE, TASK_RUN_AUDIT, TASK_RUN_PART, TASKS  # noqa: F401 (re-exported)


def broker_folders(settings: Settings) -> dict[str, Path]:
    root = settings.data_dir / "broker"
    return {"queue": root / "queue", "processed": root / "processed"}


def celery_config(settings: ServiceSettings) -> dict[str, Any]:
    conf: dict[str, Any] = dict(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        task_routes={name: {"queue": settings.queue} for name in TASKS},
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    if settings.broker_url is None:
        folders = broker_folders(settings)
        for f in folders.values():
            f.mkdir(parents=True, exist_ok=True)
        conf.update(
            broker_url="filesystem://",
            broker_transport_options={
                "data_folder_in": str(folders["queue"]),
                "data_folder_out": str(folders["queue"]),
                "processed_folder": str(folders["processed"]),
                # kombu's default control folder is ./control in the *current directory*
                "control_folder": str(folders["processed"].parent / "control"),
                "store_processed": False,
                "polling_interval": 0.5,
            },
            # the filesystem transport has no fanout for remote control / events
            worker_enable_remote_control=False,
            worker_send_task_events=False,
        )
    else:
        conf.update(
            broker_url=settings.broker_url,
            broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
            worker_send_task_events=True,
            task_send_sent_event=True,
        )
    return conf


def make_celery(settings: Settings | None = None, *, include_tasks: bool = False) -> Celery:
    """A Celery app for `settings`. Producers leave `include_tasks` False."""
    s = coerce_settings(settings)
    celery = Celery("kdaudit", include=["kdaudit.workers.tasks", "kdaudit.workers.selftest_task"] if include_tasks else [])
    celery.conf.update(celery_config(s))
    celery.conf.kdaudit_settings = s
    return celery


def broker_reachable(celery: Celery, timeout: float = 3.0) -> None:
    """Raise if the broker cannot be reached within `timeout` seconds."""
    opts = celery.conf.broker_transport_options or {}
    if str(celery.conf.broker_url).startswith("filesystem"):
        folder = Path(opts["data_folder_out"])
        if not folder.is_dir():
            raise OSError(f"broker folder {folder} does not exist")
        return
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def _worker_app() -> Celery:
    return make_celery(include_tasks=True)


#: the app `celery -A kdaudit.workers.app worker` runs (settings from KDAUDIT_* env vars)
app = _worker_app()
