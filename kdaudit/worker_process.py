"""Start and stop a Celery worker as a child process (`kdaudit serve`, `kdaudit worker`, the demo).

Why its own module: the server commands, the demo and the tests all start the same worker
the same way, and none of them should have to import the others to do it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def worker_command(queue: str, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO", embedded: bool) -> list[str]:
    """The `celery worker` command line for `queue`."""
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
    """SIGTERM, then SIGKILL after `timeout` seconds: a worker finishing its task gets the time to stop cleanly."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
