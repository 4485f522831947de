"""CLI subcommands for the service: serve, worker, migrate, keys, and the API client commands.

`kdaudit.cli` calls `register(subparsers)`; every handler takes the parsed args, returns an
exit code and reports failures as one `kdaudit: ...` line on stderr (never a traceback).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _fail(message: str) -> int:
    print(f"kdaudit: {message}", file=sys.stderr)
    return 1


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from kdaudit.core.errors import KdauditError
        from kdaudit.service.client import ApiError

        try:
            return fn(args)
        except ApiError as e:
            return _fail(str(e))
        except KdauditError as e:
            return _fail(f"{e.context}: {e}")
        except KeyboardInterrupt:
            return 130
        except OSError as e:
            return _fail(f"{e.strerror or e}" + (f": {e.filename}" if getattr(e, "filename", None) else ""))
        except Exception as e:  # last resort: one line, no traceback
            if os.environ.get("KDAUDIT_DEBUG"):
                raise
            return _fail(f"unexpected error ({type(e).__name__}: {e}); set KDAUDIT_DEBUG=1 for a traceback")

    return wrapper


def _apply_data_dir(args: argparse.Namespace) -> None:
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        os.environ["KDAUDIT_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    from kdaudit.core.settings import get_settings
    from kdaudit.store.settings import get_service_settings

    get_settings.cache_clear()
    get_service_settings.cache_clear()


# ---------------------------------------------------------------- server side


def worker_command(queue: str, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO", embedded: bool) -> list[str]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "kdaudit.workers.app", "worker",
        "--pool", pool, "--concurrency", str(concurrency), "--loglevel", loglevel, "-Q", queue,
    ]  # fmt: skip
    if embedded:  # the filesystem broker has no fanout: no mingle/gossip/heartbeat
        cmd += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    return cmd


def start_worker_process(settings: Any, *, loglevel: str = "INFO", log_file: Path | None = None) -> subprocess.Popen:
    """Start a Celery worker child process configured like `settings` (embedded or not)."""
    env = dict(os.environ)
    for name in type(settings).model_fields:  # the child sees exactly these settings
        value = getattr(settings, name)
        var = f"KDAUDIT_{name.upper()}"
        if value is None:
            env.pop(var, None)
        elif isinstance(value, list | tuple):  # list settings read comma-separated (remote_teacher_hosts)
            env[var] = ",".join(str(v) for v in value)
        elif hasattr(value, "get_secret_value"):  # SecretStr (storage_keys): str() would give '**********'
            env[var] = value.get_secret_value()
        else:
            env[var] = str(value).lower() if isinstance(value, bool) else str(value)
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            worker_command(settings.queue, loglevel=loglevel, embedded=settings.embedded),
            env=env,
            stdout=out or None,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        if out is not None:
            out.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker child gets SIGTERM if its parent dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _settings_migrated(args: argparse.Namespace):
    """The service settings for this command, with the database migrated when settings ask for it."""
    from kdaudit.store import migrate
    from kdaudit.store.settings import get_service_settings

    _apply_data_dir(args)
    settings = get_service_settings()
    if settings.should_auto_migrate:
        migrate.upgrade(settings.resolved_database_url)
    return settings


@_guard
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kdaudit.service.app import create_app

    settings = _settings_migrated(args)
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
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        # a second SIGTERM during shutdown must not interrupt stopping the worker child
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if worker is not None:
            stop_process(worker)
    return 0


@_guard
def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings_migrated(args)
    argv = worker_command(
        settings.queue, pool=args.pool, concurrency=args.concurrency, loglevel=args.log_level, embedded=settings.embedded
    )
    return subprocess.call(argv)


@_guard
def cmd_migrate(args: argparse.Namespace) -> int:
    from kdaudit.store import migrate
    from kdaudit.store.settings import get_service_settings

    _apply_data_dir(args)
    url = get_service_settings().resolved_database_url
    migrate.upgrade(url)
    print(f"kdaudit: database at revision {migrate.current_revision(url)}", file=sys.stderr)
    return 0


# keys create|list|revoke: kdaudit/lifecycle_cli.py


# ---------------------------------------------------------------- client side


def _client(args: argparse.Namespace):
    from kdaudit.service.client import Client

    if not args.api_key:
        raise _Usage("an API key is needed: --api-key or KDAUDIT_API_KEY (create one with `kdaudit keys create`)")
    return Client(args.server, args.api_key)


class _Usage(Exception):
    pass


def _client_guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _Usage as e:
            return _fail(str(e))

    return _guard(wrapper)


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


@_client_guard
def cmd_upload(args: argparse.Namespace) -> int:
    with _client(args) as c:
        doc = c.upload_teacher(args.file, args.arch, args.dataset, fmt=args.format, num_classes=args.num_classes,
                               preprocess=_contract(args), expected_accuracy=args.expected_accuracy)
    if args.json:
        _print(doc)
    else:
        print(doc["id"])
        print(
            f"kdaudit: teacher {doc['id']} uploaded: {doc['architecture'] or 'black box'} ({doc['format']}, "
            f"{doc['parameters']:,} parameters) sha256 {doc['sha256'][:16]}...",
            file=sys.stderr,
        )
    return 0


def _remote_headers(args: argparse.Namespace) -> dict[str, str]:
    """--header 'Name: value' and --header-env 'Name=ENV_VAR' (the value read from the
    environment, so that an API key stays out of shell history and `ps`)."""
    headers: dict[str, str] = {}
    for h in args.header or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise _Usage("--header takes 'Name: value' (a colon between the name and the value)")
        headers[name.strip()] = value.strip()
    for h in args.header_env or []:
        name, sep, var = h.partition("=")
        if not sep or not name.strip() or not var.strip():
            raise _Usage(f"--header-env takes 'Name=ENV_VAR', got {h[:60]!r}")  # no value here: only a variable name
        value = os.environ.get(var.strip())
        if value is None:
            raise _Usage(f"--header-env {name.strip()}: environment variable {var.strip()} is not set")
        headers[name.strip()] = value
    return headers


def _contract(args: argparse.Namespace) -> dict | None:
    """The --preprocess / --mean / --std / --pixel-scale flags, checked here (a usage error) and sent as fields."""
    from kdaudit.core.errors import InputError
    from kdaudit.preprocess_args import contract_from_args

    try:
        contract = contract_from_args(args)
    except InputError as e:
        raise _Usage(str(e)) from None
    return None if contract.is_default else contract.model_dump(mode="json", exclude_none=True)


@_client_guard
def cmd_register_remote(args: argparse.Namespace) -> int:
    headers = _remote_headers(args)
    with _client(args) as c:
        doc = c.register_remote(
            args.url,
            args.response,
            args.dataset,
            architecture=args.arch,
            headers=headers or None,
            preprocess=_contract(args),
            expected_accuracy=args.expected_accuracy,
            timeout_s=args.timeout,
            max_retries=args.max_retries,
            backoff_s=args.backoff,
            concurrency=args.concurrency,
            max_batch=args.max_batch,
        )
    if args.json:
        _print(doc)
    else:
        print(doc["id"])
        remote = doc.get("remote") or {}
        names = remote.get("header_names") or []
        print(
            f"kdaudit: remote teacher {doc['id']} registered: {doc['filename']} ({remote.get('response')}, "
            f"{doc['dataset']})" + (f", headers stored as secrets: {', '.join(names)}" if names else ""),
            file=sys.stderr,
        )
    return 0


@_client_guard
def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as c:
        doc = c.submit(
            args.teacher_id,
            idempotency_key=args.idempotency_key,
            attacks=args.attacks,
            students=args.students,
            seeds=args.seeds,
            epochs=args.epochs,
            fraction=args.fraction,
            dataset=args.dataset,
            device=args.device,
            force=True if args.force else None,
        )
    if args.json:
        _print(doc)
    else:
        print(doc["id"])
        print(f"kdaudit: audit {doc['id']} {doc['status']} ({doc['progress']['runs_total']} runs)", file=sys.stderr)
    return 0


@_client_guard
def cmd_status(args: argparse.Namespace) -> int:
    from kdaudit.service.client import describe_progress

    with _client(args) as c:
        if not args.watch:
            doc = c.status(args.audit_id)
            _print(doc) if args.json else print(describe_progress(doc))
            return 0
        last = None

        def show(d: dict[str, Any]) -> None:
            nonlocal last
            line = describe_progress(d)
            if line != last:
                print(line, flush=True)
                last = line

        doc = c.wait(args.audit_id, poll=args.interval, on_update=show)
    if args.json:
        _print(doc)
    return 0 if doc["status"] == "succeeded" else 1


@_client_guard
def cmd_report(args: argparse.Namespace) -> int:
    with _client(args) as c:
        doc = c.report(args.audit_id)
    text = json.dumps(doc, indent=2)
    if getattr(args, "html", None):
        from kdaudit.render_cli import write_html

        verdict = write_html(doc, args.html, audit_id=args.audit_id)
        if str(args.html) != "-":
            print(f"kdaudit: report page written to {args.html} (verdict: {verdict})", file=sys.stderr)
        if not args.output:
            return 0
    if args.output and str(args.output) != "-":
        Path(args.output).write_text(text + "\n")
        s = doc.get("summary", {})
        print(f"kdaudit: report written to {args.output} (verdict: {s.get('verdict')})", file=sys.stderr)
    else:
        print(text)
    return 0


@_client_guard
def cmd_cancel(args: argparse.Namespace) -> int:
    from kdaudit.service.client import describe_progress

    with _client(args) as c:
        doc = c.cancel(args.audit_id)
    print(describe_progress(doc))
    return 0


# ---------------------------------------------------------------- registration


def _client_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--server", default=os.environ.get("KDAUDIT_SERVER", DEFAULT_SERVER), help="API base URL (env KDAUDIT_SERVER)")
    p.add_argument("--api-key", default=os.environ.get("KDAUDIT_API_KEY"), help="API key (env KDAUDIT_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the full JSON document")
    return p


def _data_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-dir", help="embedded state folder (env KDAUDIT_DATA_DIR; default ~/.kdaudit)")
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    from kdaudit.distill.config import AttackName
    from kdaudit.preprocess_args import add_preprocess_args

    """Add serve, worker, migrate, keys, upload, register-remote, submit, status, report and cancel."""
    data = _data_parent()
    client = _client_parent()

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
    p.add_argument("--embedded", action="store_true", help="accepted for clarity; embedded is the default without settings")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("worker", parents=[data], help="run a Celery worker for audits")
    p.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"], help="default solo: one audit at a time")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("migrate", parents=[data], help="apply database migrations (alembic upgrade head)")
    p.set_defaults(func=cmd_migrate)

    keys = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    from kdaudit import lifecycle_cli  # keys create|list|revoke, delete, events, storage

    lifecycle_cli.register(subparsers, keys_sub, data, client)

    p = subparsers.add_parser("upload", parents=[client], help="upload a teacher checkpoint to the server")
    p.add_argument("file", type=Path)
    p.add_argument("--arch", help="architecture of a weights file, e.g. resnet18 or cnn-32-64-64-128 (not for ONNX)")
    p.add_argument("--dataset", required=True, help="dataset: digits, mnist, fashion-mnist, cifar10, cifar100, cifar100-coarse")
    p.add_argument("--format", help="checkpoint format (detected if omitted)")
    p.add_argument("--num-classes", type=int)
    add_preprocess_args(p)
    p.set_defaults(func=cmd_upload)

    p = subparsers.add_parser(
        "register-remote",
        parents=[client],
        help="register a teacher served over HTTP (its host must be in the server's remote_teacher_hosts)",
        description="Register a teacher behind an HTTP prediction endpoint (the protocol of `kdaudit serve-teacher`). "
        "Audit it with `kdaudit submit <teacher id>`. Header values and the URL's query string are stored as "
        "secrets on the server and never shown again.",
    )
    p.add_argument("--url", required=True, help="endpoint URL, e.g. https://models.example.com/v1/predict")
    p.add_argument("--response", required=True, choices=["logits", "probabilities", "labels"], help="what the endpoint answers")
    p.add_argument("--dataset", required=True, help="dataset/preprocessing it expects: digits, mnist, fashion-mnist, cifar10")
    p.add_argument("--arch", help="informational architecture name (default: remote)")
    p.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="header sent with every request (repeatable)")
    p.add_argument("--header-env", action="append", metavar="NAME=ENV_VAR",
                   help="header whose value is read from an environment variable (keeps keys out of shell history)")
    p.add_argument("--timeout", type=float, help="seconds per request (server default 10)")
    p.add_argument("--max-retries", type=int, help="retries on connection errors, timeouts, 5xx, 429 (default 4)")
    p.add_argument("--backoff", type=float, help="first retry delay in seconds, doubled each retry (default 0.5)")
    p.add_argument("--concurrency", type=int, help="requests in flight at once (default 4)")
    p.add_argument("--max-batch", type=int, help="images per request (default 256)")
    add_preprocess_args(p)
    p.set_defaults(func=cmd_register_remote)

    p = subparsers.add_parser("submit", parents=[client], help="queue an audit of an uploaded teacher")
    p.add_argument("teacher_id")
    p.add_argument("--attacks", nargs="+", choices=list(get_args(AttackName)))
    p.add_argument("--students", nargs="+")
    p.add_argument("--seeds", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--fraction", type=float)
    p.add_argument("--dataset")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="run even if the teacher sanity check fails (the report says so)")
    p.add_argument("--idempotency-key", help="retries with the same key return the same audit")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("status", parents=[client], help="show an audit's status")
    p.add_argument("audit_id")
    p.add_argument("--watch", action="store_true", help="poll until it finishes (exit 0 only if it succeeded)")
    p.add_argument("--interval", type=float, default=2.0)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("report", parents=[client], help="download an audit's report JSON")
    p.add_argument("audit_id")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--html", metavar="OUT_HTML", help="also (or only, without -o) write the report as a self-contained HTML page")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("cancel", parents=[client], help="cancel an audit")
    p.add_argument("audit_id")
    p.set_defaults(func=cmd_cancel)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m kdaudit.service_cli ...`), handy before cli.py wires us in."""
    parser = argparse.ArgumentParser(prog="kdaudit")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    try:
        from kdaudit.demo import register_demo

        register_demo(sub)
    except ImportError:  # pragma: no cover
        pass
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
