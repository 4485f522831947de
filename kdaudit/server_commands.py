"""`kdaudit serve`, `kdaudit worker` and `kdaudit migrate`: running the service itself.

With no KDAUDIT_DATABASE_URL / KDAUDIT_BROKER_URL the service is embedded (SQLite and a
filesystem queue under the data folder) and `serve` starts its own worker child process;
`serve --embedded` insists on that even where those variables are set (a laptop with a
production environment exported, a quick local check).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile

from kdaudit.command_errors import one_line_errors
from kdaudit.core.errors import InputError
from kdaudit.service_state import apply_state_options, data_dir_option, settings_migrated
from kdaudit.worker_process import start_worker_process, stop_process, worker_command


@one_line_errors
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kdaudit.service.app import create_app

    workers = args.workers if args.workers is not None else os.environ.get("KDAUDIT_API_WORKERS", "1")
    if not str(workers).isdigit() or int(workers) < 1:  # before the database is touched
        raise InputError(f"API workers must be a whole number >= 1 (--workers / KDAUDIT_API_WORKERS), got {workers!r}")
    workers = int(workers)
    settings = settings_migrated(args)
    if workers > 1 and settings.embedded:
        raise InputError(
            "--workers > 1 needs the production stack (KDAUDIT_DATABASE_URL and KDAUDIT_BROKER_URL): the embedded "
            "service keeps its rate-limit buckets in the API process, so N processes would allow N times the limit"
        )
    worker = None
    start = settings.embedded if args.worker is None else args.worker
    if start:
        worker = start_worker_process(settings)
        print(f"kdaudit: worker process {worker.pid} started", file=sys.stderr)
    mode = "embedded (SQLite + filesystem broker)" if settings.embedded else "production"
    print(f"kdaudit: serving {mode} on http://{args.host}:{args.port}  data: {settings.data_dir}", file=sys.stderr)
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so the
    # worker child is stopped below instead of the process dying on the spot
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if workers == 1:
            uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower())
        else:  # each process builds the app from the environment apply_state_options wrote
            with tempfile.TemporaryDirectory(prefix="kdaudit-metrics-") as metrics_dir:
                os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)  # service/metrics.py sums the processes
                uvicorn.run("kdaudit.service.app:create_app", factory=True, workers=workers, host=args.host,
                            port=args.port, log_level=args.log_level.lower())  # fmt: skip
    finally:
        # a second SIGTERM during shutdown must not interrupt stopping the worker child
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if worker is not None:
            stop_process(worker)
    return 0


@one_line_errors
def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_migrated(args)
    argv = worker_command(
        settings.queue, pool=args.pool, concurrency=args.concurrency, loglevel=args.log_level, embedded=settings.embedded
    )
    return subprocess.call(argv)


@one_line_errors
def cmd_migrate(args: argparse.Namespace) -> int:
    from kdaudit.store import migrate
    from kdaudit.store.settings import get_service_settings

    apply_state_options(args)
    url = get_service_settings().resolved_database_url
    migrate.upgrade(url)
    print(f"kdaudit: database at revision {migrate.current_revision(url)}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve`, `worker` and `migrate`."""
    data = data_dir_option()
    p = subparsers.add_parser(
        "serve",
        parents=[data],
        help="run the API (embedded: SQLite + a local worker process)",
        description="Run the HTTP API. With no KDAUDIT_DATABASE_URL/KDAUDIT_BROKER_URL it is self-contained: "
        "SQLite and a filesystem queue under the data folder, and a worker child process.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--worker", dest="worker", action="store_true", default=None, help="start a worker child process (default in embedded mode)")
    p.add_argument("--no-worker", dest="worker", action="store_false", help="do not start a worker child process")
    p.add_argument("--embedded", action="store_true",
                   help="run embedded even if KDAUDIT_DATABASE_URL / KDAUDIT_BROKER_URL are set (ignored by this "
                   "process and its worker)")
    p.add_argument("--workers", type=int,
                   help="API processes (env KDAUDIT_API_WORKERS; default 1). Production stack only; about one per core: "
                   "benchmarks/RESULTS.md measured 2 processes at 1.7x the status-poll throughput of 1 on 2 cores")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("worker", parents=[data], help="run a Celery worker for audits")
    p.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"], help="default solo: one audit at a time")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("migrate", parents=[data], help="apply database migrations (alembic upgrade head)")
    p.set_defaults(func=cmd_migrate)
