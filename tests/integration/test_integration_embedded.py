"""The embedded default end to end, as a user runs it: `kdaudit serve` (SQLite + filesystem
broker + a worker child process, no server software), `kdaudit keys create`, then the
client commands over real HTTP: upload -> submit -> status --watch -> report."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import service as h  # noqa: E402

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "kdaudit.cli"]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDAUDIT_")}
    env["KDAUDIT_DATA_DIR"] = str(data_dir)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    data = root / "data"
    port = h.free_port()
    log = open(root / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--data-dir", str(data)],
        env=_env(data),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        h.wait_until_serving(url, proc, root / "serve.log")
        yield {"url": url, "data": data, "root": root, "log": root / "serve.log"}
    finally:
        from kdaudit.worker_process import stop_process

        stop_process(proc, timeout=30)
        log.close()


def cli(server, *args: str, key: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = _env(server["data"])
    env["KDAUDIT_SERVER"] = server["url"]
    if key:
        env["KDAUDIT_API_KEY"] = key
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_embedded_flow_through_the_cli(server):
    r = cli(server, "keys", "create", "--tenant", "embedded")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("kda_")

    teacher = h.make_teacher_file(server["root"] / "teacher.safetensors")
    r = cli(server, "upload", str(teacher), "--arch", h.TEACHER_ARCH, "--dataset", "digits", key=key)
    assert r.returncode == 0, r.stderr
    teacher_id = r.stdout.strip()

    r = cli(server, "submit", teacher_id, "--students", "cnn-4-8-8-16", "--seeds", "1", "--epochs", "1", "--force", key=key)
    assert r.returncode == 0, r.stderr
    audit_id = r.stdout.strip()

    r = cli(server, "status", audit_id, "--watch", "--interval", "0.5", key=key)
    assert r.returncode == 0, (r.stdout, r.stderr, server["log"].read_text()[-3000:])
    assert "succeeded" in r.stdout.splitlines()[-1]

    out = server["root"] / "report.json"
    r = cli(server, "report", audit_id, "-o", str(out), key=key)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["schema"] == "kdaudit.report/v1"

    # it really is the embedded store: a SQLite file and a filesystem queue under the data dir
    db = sqlite3.connect(server["data"] / "kdaudit.db")
    try:
        status, done, total = db.execute(
            "SELECT status, runs_done, runs_total FROM audits WHERE id=?", (audit_id,)
        ).fetchone()
        n_runs = db.execute("SELECT count(*) FROM runs WHERE audit_id=?", (audit_id,)).fetchone()[0]
        body = json.loads(db.execute("SELECT body FROM reports WHERE audit_id=?", (audit_id,)).fetchone()[0])
    finally:
        db.close()
    assert status == "succeeded" and done == total == n_runs == len(report["runs"])
    assert body.get("kdaudit_sealed") and "summary" not in body  # sealed at rest (store/reports.py)
    from kdaudit.store.crypto import Keyring, _parse_key

    key = (server["data"] / "storage.key").read_text().split()[0]  # created on first use, 0600
    assert oct((server["data"] / "storage.key").stat().st_mode & 0o777) == "0o600"
    assert Keyring([_parse_key(key)]).open_json(body, f"kdaudit-report/{audit_id}") == report
    assert (server["data"] / "broker" / "queue").is_dir()


def test_cli_errors_are_one_line(server):
    r = cli(server, "status", "nope", key="kda_wrong")
    assert r.returncode == 1 and r.stderr.startswith("kdaudit: 401") and "Traceback" not in r.stderr
    r = cli(server, "upload", "/no/such/file.pt", "--arch", "cnn-8-8-8-16", "--dataset", "digits", key="kda_x")
    assert r.returncode == 1 and r.stderr.startswith("kdaudit: ") and len(r.stderr.strip().splitlines()) == 1
    env_srv = dict(server, url="http://127.0.0.1:1")
    r = cli(env_srv, "status", "x", key="k")
    assert r.returncode == 1 and r.stderr.startswith("kdaudit: cannot reach")
