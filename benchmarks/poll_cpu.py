"""CPU cost of one status poll inside the app, without HTTP: `GET /v1/audits/{id}` driven as
ASGI calls (20 concurrent) against PostgreSQL + Redis, CPU seconds of this process / requests.

    python benchmarks/poll_cpu.py                 # this tree
    python benchmarks/poll_cpu.py --compare HEAD  # git HEAD's code, then this tree, one run

On a shared machine wall-clock throughput swings with other jobs' load; CPU time per request
barely does, so this is the figure to compare versions by. It leaves out uvicorn's HTTP parsing
(load_status.py includes it). The rate limit is set far above the load (its Redis round trip is
measured, never refuses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import load_status as L  # noqa: E402


async def _one(app, path: str, key: str) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5),
             "server": ("bench", 80), "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())]}  # fmt: skip
    status: list[int] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise SystemExit(f"poll answered {status}")


async def _measure(app, paths: list[str], key: str, n: int, concurrency: int) -> float:
    """CPU ms per poll: `concurrency` clients, client i polling paths[i % len(paths)]."""
    async def worker(path: str, k: int) -> None:
        for _ in range(k):
            await _one(app, path, key)

    start = time.process_time()
    await asyncio.gather(*(worker(paths[i % len(paths)], n // concurrency) for i in range(concurrency)))
    return (time.process_time() - start) / n * 1000


def measure_here(n: int, audits: int = 1) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="kdaudit-pollcpu-"))
    name, url = L._create_pg()
    os.environ.update(
        KDAUDIT_DATA_DIR=str(tmp / "data"), KDAUDIT_STORAGE_DIR=str(tmp / "teachers"), KDAUDIT_AUTO_MIGRATE="false",
        KDAUDIT_RATE_LIMIT_PER_SECOND="1000000", KDAUDIT_RATE_LIMIT_BURST="1000000",
        KDAUDIT_QUEUE=f"kdaudit-pollcpu-{uuid.uuid4().hex[:8]}", KDAUDIT_DATABASE_URL=url, KDAUDIT_BROKER_URL=L.REDIS_URL,
    )  # fmt: skip
    try:
        key, ids = L._seed(url, audits)
        from kdaudit.service.app import create_app

        app = create_app()
        paths = [f"/v1/audits/{i}" for i in ids]

        async def run() -> list[float]:
            await _measure(app, paths, key, 200, 20)  # warm-up: imports, pools, key cache
            return [await _measure(app, paths, key, n, 20) for _ in range(3)]

        runs = asyncio.run(run())
    finally:
        L._drop_pg(name)
    return {"cpu_ms_per_request": round(min(runs), 3), "runs_ms": [round(r, 3) for r in runs], "requests": n,
            "audits_polled": audits}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--audits", type=int, default=1, help="distinct audits (20 clients; 1 = all poll one audit)")
    ap.add_argument("--compare", metavar="REF")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not args.compare:
        out = measure_here(args.requests, args.audits)
    else:
        baseline = L._baseline_tree(args.compare, Path(tempfile.mkdtemp(prefix="kdaudit-pollcpu-")))
        out = {"machine": f"{os.uname().nodename} ({os.cpu_count()} CPUs)", "load_average_at_start": os.getloadavg()}
        for label, extra in (("before", str(baseline)), ("after", "")):
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra, os.environ.get("PYTHONPATH", "")) if p)}
            res = subprocess.run([sys.executable, __file__, "--requests", str(args.requests), "--audits", str(args.audits)],
                                 env=env, check=True, capture_output=True, text=True)  # fmt: skip
            out[label] = {"code": f"git {args.compare}" if extra else "working tree", **json.loads(res.stdout)}
        out["cpu_ratio"] = round(out["before"]["cpu_ms_per_request"] / out["after"]["cpu_ms_per_request"], 2)
        out["load_average_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
