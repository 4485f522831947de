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


def _seed(url: str) -> tuple[str, str]:
    """Migrate, create a tenant key, a teacher row and a running audit; return (key, audit id)."""
    from kdaudit.store import migrate, repo
    from kdaudit.store.db import session_factory

    migrate.upgrade(url)
    with session_factory(url)() as s:
        key, row = repo.create_api_key(s, "load")
        teacher = repo.add_teacher(
            s, row.tenant_id, sha256="0" * 64, filename="t.safetensors", architecture="cnn-8-8-8-16",
            dataset="digits", num_classes=10, in_channels=1, format="safetensors", parameters=3000, size_bytes=1,
        )  # fmt: skip
        audit, _ = repo.create_audit(
            s, tenant_id=row.tenant_id, teacher_id=teacher.id, config={"schedule": {"epochs": 40}},
            runs_total=6, epochs=40, request_hash=uuid.uuid4().hex,
        )  # fmt: skip
        repo.claim_audit(s, audit.id, "load-worker", 120)
        repo.update_progress(s, audit.id, "load-worker", current_run="normal_kd/cnn-4-8-8-16/seed0", epoch=7, epochs=40)
    return key, audit.id


async def _poll(client: httpx.AsyncClient, url: str, headers: dict, stop: float, lat: list, errors: list) -> None:
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        try:
            r = await client.get(url, headers=headers)
            ok = r.status_code == 200
            if not ok:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
        except Exception as e:  # transport errors count as failures
            ok = False
            errors.append(f"{type(e).__name__}: {e}")
        if ok:
            lat.append(time.perf_counter() - t0)


async def _run_load(base: str, path: str, key: str, clients: int, seconds: float) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    lat: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        headers = {"Authorization": f"Bearer {key}"}
        r = await client.get(path, headers=headers)  # warm-up + sanity check
        r.raise_for_status()
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(_poll(client, path, headers, stop, lat, errors) for _ in range(clients)))
        wall = time.perf_counter() - start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")

    return {
        "clients": clients,
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
    """User + system CPU seconds of process `pid` (all its threads), from /proc; -1 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0


def _serve_and_load(env: dict, tmp: Path, label: str, path: str, key: str, clients: int, seconds: float) -> dict:
    """Start one uvicorn with `env`, run the load against it, stop it."""
    port = _free_port()
    log = tmp / f"server-{label}.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "kdaudit.service.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "30"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115 (a file, never a pipe)
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
        cpu0 = _cpu_seconds(server.pid)
        result = asyncio.run(_run_load(base, path, key, clients, seconds))
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
    if result["errors"]:
        print(f"server log ({label}, tail):\n{log.read_text(errors='replace')[-1500:]}", file=sys.stderr)
    return result


def compare(args: argparse.Namespace) -> int:
    """`--compare REF`: the same load against REF's code, then against this working tree, on one
    seeded PostgreSQL + Redis stack, back to back in one run (before/after on one machine)."""
    tmp = Path(tempfile.mkdtemp(prefix="kdaudit-load-"))
    pg_name, url = _create_pg()
    env = dict(os.environ)
    env.update(
        KDAUDIT_DATA_DIR=str(tmp / "data"), KDAUDIT_STORAGE_DIR=str(tmp / "teachers"), KDAUDIT_AUTO_MIGRATE="false",
        KDAUDIT_RATE_LIMIT_PER_SECOND="1000000", KDAUDIT_RATE_LIMIT_BURST="1000000",
        KDAUDIT_QUEUE=f"kdaudit-load-{uuid.uuid4().hex[:8]}", KDAUDIT_DATABASE_URL=url, KDAUDIT_BROKER_URL=REDIS_URL,
    )  # fmt: skip
    out: dict = {"stack": "PostgreSQL + Redis (broker and shared rate-limit buckets)", "server": "uvicorn, 1 process",
                 "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()})",
                 "load_average_at_start": os.getloadavg()}  # fmt: skip
    try:
        key, audit_id = _seed(url)
        path = f"/v1/audits/{audit_id}"
        baseline = _baseline_tree(args.compare, tmp)
        before_env = {**env, "PYTHONPATH": os.pathsep.join([str(baseline), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        out["before"] = {"code": f"git {args.compare}", **_serve_and_load(before_env, tmp, "before", path, key,
                                                                          args.clients, args.seconds)}  # fmt: skip
        out["after"] = {"code": "working tree", **_serve_and_load(env, tmp, "after", path, key, args.clients, args.seconds)}
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
    ap.add_argument("--sqlite", action="store_true", help="embedded SQLite + filesystem broker instead")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--compare", metavar="REF", help="before/after in one run: REF's code (e.g. HEAD), then this tree")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args)

    tmp = Path(tempfile.mkdtemp(prefix="kdaudit-load-"))
    pg_name = None
    env = dict(os.environ)
    env.update(
        KDAUDIT_DATA_DIR=str(tmp / "data"),
        KDAUDIT_STORAGE_DIR=str(tmp / "teachers"),
        KDAUDIT_AUTO_MIGRATE="false",
        KDAUDIT_RATE_LIMIT_PER_SECOND="1000000",
        KDAUDIT_RATE_LIMIT_BURST="1000000",
        KDAUDIT_QUEUE=f"kdaudit-load-{uuid.uuid4().hex[:8]}",
    )
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
    server = None
    try:
        key, audit_id = _seed(url)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "kdaudit.service.app:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "30"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"),  # noqa: SIM115 (a file, never a pipe: a full pipe blocks the server)
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"uvicorn did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        result = asyncio.run(_run_load(base, f"/v1/audits/{audit_id}", key, args.clients, args.seconds))
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        if pg_name:
            _drop_pg(pg_name)
        log_tail = (tmp / "server.log").read_text(errors="replace")[-1500:] if (tmp / "server.log").exists() else ""
    result.update(
        stack=stack,
        server="uvicorn, 1 process",
        machine=f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()})",
    )
    if result["errors"] and log_tail:
        print(f"server log (tail):\n{log_tail}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
