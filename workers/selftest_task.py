"""The operator self-test as a worker task: the API only enqueues it (`POST /v1/selftest`).

It trained in the API process for any key (120 s of a core per call). Now a worker runs
`distill/selftest.py` and writes the outcome as JSON to `<storage_dir>/selftests/<run id>.json`
(the storage folder the API and the workers already share for teacher files); there is no
Celery result backend and no table for it. The file is written to a temporary name and
renamed, so the API never reads half a result.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from pathlib import Path
from typing import Any

from celery import shared_task

from kdaudit.store.settings import get_service_settings
from kdaudit.workers.names import TASK_SELFTEST

_RUN_ID = re.compile(r"^[a-f0-9]{32}$")


def result_path(storage_dir: Path, run_id: str) -> Path:
    if not _RUN_ID.match(run_id):
        raise ValueError("bad self-test run id")
    return storage_dir / "selftests" / f"{run_id}.json"


def write_result(storage_dir: Path, run_id: str, doc: dict[str, Any]) -> None:
    path = result_path(storage_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@shared_task(name=TASK_SELFTEST, bind=True, acks_late=True, ignore_result=True)
def selftest_task(self, run_id: str) -> str:
    from kdaudit.distill.selftest import run_selftest

    settings = getattr(self.app.conf, "kdaudit_settings", None) or get_service_settings()
    storage = settings.resolved_storage_dir
    write_result(storage, run_id, {"id": run_id, "status": "running"})
    try:
        result = run_selftest(device="cpu").to_dict()
        write_result(storage, run_id, {"id": run_id, "status": "succeeded", "result": result})
        return "succeeded"
    except Exception as e:  # recorded for the operator; the traceback stays in the worker log
        traceback.print_exc()
        write_result(storage, run_id, {"id": run_id, "status": "failed", "error": f"{type(e).__name__}: {e}"[:500]})
        return "failed"
