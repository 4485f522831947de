"""Bounded load test: N concurrent clients poll `GET /v1/audits/{id}` on a live uvicorn over
loopback for a fixed time; prints throughput, latency percentiles and errors (any non-200 or
transport error counts as an error).

    python benchmarks/load_status.py                      # 200 clients, 10 s, PostgreSQL + Redis
    python benchmarks/load_status.py --clients 50 --seconds 5 --sqlite
    python benchmarks/load_status.py --json out.json      # machine-readable result
    python benchmarks/load_status.py --compare HEAD       # before (git HEAD's code) and after, one run

The stack is the production one: a fresh PostgreSQL database (KDAUDIT_TEST_POSTGRES_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/test; dropped afterwards), Redis as broker and as
the shared rate-limit store (KDAUDIT_TEST_REDIS_URL), one uvicorn process. The rate limit is set
far above the offered load so that its cost (one Redis round trip per request) is measured but
it never refuses. `--sqlite` uses the embedded store instead. The load generator runs on the
same machine as the server: on a small VM they share the CPU, so numbers are a lower bound.
Exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

PG_ADMIN_URL = os.environ.get("KDAUDIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KDAUDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_pg() -> tuple[str, str]:
    import psycopg

    name = f"kdaudit_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name, f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _drop_pg(name: str) -> None:
    import psycopg

    from kdaudit.store.db import dispose_all

    dispose_all()
    with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seed(url: str, audits: int = 1) -> tuple[str, list[str]]:
    """Migrate, create a tenant key, a teacher row and `audits` running audits; return (key, audit ids)."""
    from kdaudit.store import migrate, repo
    from kdaudit.store.db import session_factory

    migrate.upgrade(url)
    with session_factory(url)() as s:
        key, row = repo.create_api_key(s, "load")
        teacher = repo.add_teacher(
            s, row.tenant_id, sha256="0" * 64, filename="t.safetensors", architecture="cnn-8-8-8-16",
            dataset="digits", num_classes=10, in_channels=1, format="safetensors", parameters=3000, size_bytes=1,
        )  # fmt: skip
        ids = []
        for _ in range(audits):
            audit, _ = repo.create_audit(
                s, tenant_id=row.tenant_id, teacher_id=teacher.id, config={"schedule": {"epochs": 40}},
                runs_total=6, epochs=40, request_hash=uuid.uuid4().hex,
            )  # fmt: skip
            repo.claim_audit(s, audit.id, "load-worker", 120)
            repo.update_progress(s, audit.id, "load-worker", current_run="normal_kd/cnn-4-8-8-16/seed0", epoch=7, epochs=40)
            ids.append(audit.id)
    return key, ids


class _Conn:
    """One keep-alive HTTP/1.1 connection that sends the same GET again and again.

    The load generator shares the machine's cores with the server, so it must cost far less per
    request than the server does: httpx spent ~1-2 ms of CPU a request here, as much as the server
    it measured. This client writes pre-built request bytes and reads the status line, the
    Content-Length and the body: tens of microseconds a request. Any non-200 answer, or a
    malformed or closed response, is an error (and the connection is reopened)."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader = self.writer = None

    async def get(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await self.reader.readexactly(length) if length else b""
            if b"connection: close" in head.lower():
                self.close()
            return status, body
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _poll(conn: _Conn, stop: float, lat: list, errors: list) -> None:
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(conn.get(), 30.0)
            ok = status == 200
            if not ok:
                errors.append(f"HTTP {status}: {body[:200]!r}")
        except Exception as e:  # transport errors and timeouts count as failures
            ok = False
            errors.append(f"{type(e).__name__}: {e}")
        if ok:
            lat.append(time.perf_counter() - t0)
    conn.close()


async def _run_load(base: str, paths: list[str], key: str, clients: int, seconds: float) -> dict:
    """`clients` connections, client i polling paths[i % len(paths)] (one audit each, or all the same)."""
    host, port = base.removeprefix("http://").split(":")

    def request(path: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
                "Accept: application/json\r\n\r\n").encode()

    lat: list[float] = []
    errors: list[str] = []
    for path in paths:  # warm-up + sanity check of every path
        warm = _Conn(host, int(port), request(path))
        status, body = await warm.get()
        warm.close()
        if status != 200:
            raise SystemExit(f"the status poll answered {status}: {body[:300]!r}")
    conns = [_Conn(host, int(port), request(paths[i % len(paths)])) for i in range(clients)]
    start = time.perf_counter()
    stop = start + seconds
    await asyncio.gather(*(_poll(c, stop, lat, errors) for c in conns))
    wall = time.perf_counter() - start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")

    return {
        "clients": clients,
        "audits_polled": len(paths),
        "seconds": round(wall, 2),
        "requests_ok": len(lat),
        "errors": len(errors),
        "error_samples": errors[:5],
        "throughput_rps": round(len(lat) / wall, 1),
        "latency_ms": {
            "p50": round(pct(50), 1),
            "p90": round(pct(90), 1),
            "p99": round(pct(99), 1),
            "max": round(lat[-1] * 1000, 1) if lat else None,
            "mean": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        },
    }


#: package-dir of pyproject.toml: import name -> folder in the repository
_PACKAGES = {"core": "core", "models": "models", "distill": "distill", "store": "store", "service": "service",
             "workers": "workers", "migrations": "migrations"}  # fmt: skip


def _baseline_tree(ref: str, tmp: Path) -> Path:
    """The code of git `ref` laid out as an importable `kdaudit` package; returns the folder to
    put first on PYTHONPATH (it shadows the editable install, whose finder comes after it)."""
    repo = Path(__file__).resolve().parent.parent
    src = tmp / "baseline-src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", ref], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    pkg = tmp / "baseline-pkg" / "kdaudit"
    pkg.mkdir(parents=True)
    for f in (src / "kdaudit").iterdir():
        (pkg / f.name).symlink_to(f)
    for name, folder in _PACKAGES.items():
        (pkg / name).symlink_to(src / folder)
    return pkg.parent


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its children (uvicorn's workers), from /proc; -1 elsewhere."""
    try:
        pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        total = 0.0
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total
    except (OSError, ValueError, IndexError):
        return -1.0


#: how each side of a comparison is served. Before: the baseline's code the way it shipped (one
#: uvicorn process; without uvloop/httptools installed uvicorn used asyncio + h11). After: what
#: `kdaudit serve --workers N` runs (uvicorn's own choice of loop and parser: uvloop + httptools,
#: now dependencies).
BASELINE_SERVER = ["--loop", "asyncio", "--http", "h11"]


def _server_argv(port: int, workers: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--factory", "kdaudit.service.app:create_app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "30",
            "--workers", str(workers), *extra]  # fmt: skip


def _serve_and_load(env: dict, tmp: Path, label: str, paths: list[str], key: str, clients: int, seconds: float,
                    workers: int = 1, extra: list[str] | None = None) -> dict:  # fmt: skip
    """Start uvicorn with `env`, run the load against it, stop it."""
    port = _free_port()
    log = tmp / f"server-{label}.log"
    if workers > 1:  # the API's metrics in multi-process mode (service/metrics.py)
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="kdaudit-metrics-", dir=tmp)}
    # cwd outside the repository: `python -m` puts the cwd first on sys.path, and the repository's own
    # kdaudit/ folder would then shadow a baseline tree on PYTHONPATH (an early version of --compare
    # measured the working tree twice that way); the JSON records which code the server imported
    code = subprocess.run([sys.executable, "-c", "import kdaudit.service.app as m; print(m.__file__)"], env=env, cwd=tmp,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    server = subprocess.Popen(
        _server_argv(port, workers, extra or []), env=env, stdout=subprocess.DEVNULL, cwd=tmp,
        stderr=open(log, "wb"),  # noqa: SIM115 (a file, never a pipe: a full pipe blocks the server)
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"uvicorn ({label}) did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(2.0 if workers > 1 else 0.2)  # every worker up, not just the first
        cpu0 = _cpu_seconds(server.pid)
        result = asyncio.run(_run_load(base, paths, key, clients, seconds))
        cpu = _cpu_seconds(server.pid) - cpu0
        if result["requests_ok"] and cpu >= 0:  # contention-proof: what one request costs the server
            result["server_cpu_ms_per_request"] = round(cpu / result["requests_ok"] * 1000, 2)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
    result["code_imported"] = code
    result["server"] = f"uvicorn, {workers} process{'es' if workers > 1 else ''}" + (f" ({' '.join(extra)})" if extra else "")
    if result["errors"]:
        print(f"server log ({label}, tail):\n{log.read_text(errors='replace')[-1500:]}", file=sys.stderr)
    return result


def _base_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(
        KDAUDIT_DATA_DIR=str(tmp / "data"), KDAUDIT_STORAGE_DIR=str(tmp / "teachers"), KDAUDIT_AUTO_MIGRATE="false",
        KDAUDIT_RATE_LIMIT_PER_SECOND="1000000", KDAUDIT_RATE_LIMIT_BURST="1000000",
        KDAUDIT_QUEUE=f"kdaudit-load-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    return env


def _machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()})"


def compare(args: argparse.Namespace) -> int:
    """`--compare REF`: the same load against REF's code served as it shipped, then against this
    working tree served as `kdaudit serve --workers N` serves it, on one seeded PostgreSQL + Redis
    stack, back to back in one run (before/after on one machine)."""
    tmp = Path(tempfile.mkdtemp(prefix="kdaudit-load-"))
    pg_name, url = _create_pg()
    env = {**_base_env(tmp), "KDAUDIT_DATABASE_URL": url, "KDAUDIT_BROKER_URL": REDIS_URL}
    out: dict = {"stack": "PostgreSQL + Redis (broker and shared rate-limit buckets)", "machine": _machine(),
                 "client": "raw asyncio HTTP/1.1 keep-alive connections (benchmarks/load_status.py)",
                 "load_average_at_start": os.getloadavg()}  # fmt: skip
    try:
        key, ids = _seed(url, args.audits)
        paths = [f"/v1/audits/{i}" for i in ids]
        baseline = _baseline_tree(args.compare, tmp)
        before_env = {**env, "PYTHONPATH": os.pathsep.join([str(baseline), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        repo_root = str(Path(__file__).resolve().parent.parent)
        out["before"] = {"code": f"git {args.compare}", **_serve_and_load(before_env, tmp, "before", paths, key, args.clients,
                                                                          args.seconds, 1, BASELINE_SERVER)}  # fmt: skip
        out["after"] = {"code": "working tree", **_serve_and_load(env, tmp, "after", paths, key, args.clients, args.seconds,
                                                                  args.workers)}  # fmt: skip
        if out["before"]["code_imported"].startswith(repo_root):
            raise SystemExit(f"the baseline server imported the working tree ({out['before']['code_imported']})")
    finally:
        _drop_pg(pg_name)
    out["load_average_at_end"] = os.getloadavg()
    b, a = out["before"]["throughput_rps"], out["after"]["throughput_rps"]
    out["speedup"] = round(a / b, 2) if b else None
    cb, ca = out["before"].get("server_cpu_ms_per_request"), out["after"].get("server_cpu_ms_per_request")
    out["server_cpu_ratio"] = round(cb / ca, 2) if cb and ca else None
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if out["before"]["errors"] or out["after"]["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--audits", type=int, default=1,
                    help="distinct audits polled (client i polls audit i mod N; 1 = all clients watch one audit)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (kdaudit serve --workers)")
    ap.add_argument("--sqlite", action="store_true", help="embedded SQLite + filesystem broker instead")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--compare", metavar="REF", help="before/after in one run: REF's code (e.g. HEAD), then this tree")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args)

    tmp = Path(tempfile.mkdtemp(prefix="kdaudit-load-"))
    pg_name = None
    env = _base_env(tmp)
    if args.sqlite:
        url = f"sqlite:///{tmp / 'data' / 'kdaudit.db'}"
        env.pop("KDAUDIT_DATABASE_URL", None)
        env.pop("KDAUDIT_BROKER_URL", None)
        (tmp / "data").mkdir(parents=True)
        stack = "SQLite (WAL) + filesystem broker, in-process rate limiter"
    else:
        pg_name, url = _create_pg()
        env.update(KDAUDIT_DATABASE_URL=url, KDAUDIT_BROKER_URL=REDIS_URL)
        stack = "PostgreSQL + Redis (broker and shared rate-limit buckets)"
    try:
        key, ids = _seed(url, args.audits)
        result = _serve_and_load(env, tmp, "server", [f"/v1/audits/{i}" for i in ids], key, args.clients, args.seconds,
                                 args.workers)  # fmt: skip
    finally:
        if pg_name:
            _drop_pg(pg_name)
    result.update(stack=stack, machine=_machine())
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
