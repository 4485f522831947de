"""A small synchronous client for the /v1 API (used by the CLI, the demo and the tests)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """An error answer (problem+json) or an unreachable server, as one readable line."""

    def __init__(self, message: str, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class Client:
    def __init__(self, server: str, api_key: str | None, *, timeout: float = 120.0) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing

    def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach {self.server}: {e}") from None
        if r.status_code >= 400:
            problem: dict[str, Any] = {}
            try:
                problem = r.json()
            except ValueError:
                pass
            detail = problem.get("detail") or problem.get("title") or r.reason_phrase
            raise ApiError(f"{r.status_code} {detail}", r.status_code, problem)
        return r

    # ---------------------------------------------------------------- API

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/readyz").json()

    def upload_teacher(
        self,
        path: str | Path,
        architecture: str | None,
        dataset: str,
        *,
        fmt: str | None = None,
        num_classes: int | None = None,
        preprocess: dict[str, Any] | None = None,
        expected_accuracy: float | None = None,
    ) -> dict[str, Any]:
        """`architecture` None for an ONNX file; `preprocess`: TeacherInput fields (preset or pixel_scale/mean/std)."""
        path = Path(path)
        data: dict[str, str] = {"dataset": dataset}
        if architecture:
            data["architecture"] = architecture
        for k, v in (preprocess or {}).items():
            if v is not None and k in ("preset", "pixel_scale", "mean", "std"):
                name = "preprocess" if k == "preset" else k
                data[name] = ",".join(str(x) for x in v) if isinstance(v, list | tuple) else str(v)
        if data.get("preprocess") == "custom":
            del data["preprocess"]
        if expected_accuracy is not None:
            data["expected_accuracy"] = str(expected_accuracy)
        if fmt:
            data["format"] = fmt
        if num_classes is not None:
            data["num_classes"] = str(num_classes)
        try:
            fh = open(path, "rb")
        except OSError as e:
            raise ApiError(f"cannot read {path}: {e.strerror}") from None
        with fh:
            return self._request(
                "POST", "/v1/teachers", data=data, files={"file": (path.name, fh, "application/octet-stream")}
            ).json()

    def register_remote(
        self,
        url: str,
        response: str,
        dataset: str,
        *,
        architecture: str | None = None,
        headers: dict[str, str] | None = None,
        preprocess: dict[str, Any] | None = None,
        expected_accuracy: float | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Register a teacher served over HTTP (POST /v1/teachers/remote). `knobs`: timeout_s,
        max_retries, backoff_s, concurrency, max_batch (None = the server's default)."""
        body: dict[str, Any] = {"url": url, "response": response, "dataset": dataset}
        if architecture:
            body["architecture"] = architecture
        if preprocess:
            body["preprocess"] = {k: v for k, v in preprocess.items() if v is not None}
        if expected_accuracy is not None:
            body["expected_accuracy"] = expected_accuracy
        if headers:
            body["headers"] = headers
        body.update({k: v for k, v in knobs.items() if v is not None})
        return self._request("POST", "/v1/teachers/remote", json=body).json()

    def submit(self, teacher_id: str, *, idempotency_key: str | None = None, **options: Any) -> dict[str, Any]:
        body = {"teacher_id": teacher_id, **{k: v for k, v in options.items() if v is not None}}
        key = idempotency_key or uuid.uuid4().hex
        return self._request("POST", "/v1/audits", json=body, headers={"Idempotency-Key": key}).json()

    def status(self, audit_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/audits/{audit_id}").json()

    def list_audits(self, limit: int = 20, offset: int = 0, status: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._request("GET", "/v1/audits", params=params).json()

    def report(self, audit_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/audits/{audit_id}/report").json()

    def cancel(self, audit_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/audits/{audit_id}/cancel").json()

    def delete(self, kind: str, obj_id: str, *, cancel: bool = False) -> None:
        """DELETE a teacher or an audit (`kind`: 'teacher' or 'audit'); `cancel` stops its running audits."""
        self._request("DELETE", f"/v1/{kind}s/{obj_id}", params={"cancel": "true"} if cancel else None)

    def events(self, limit: int = 50, offset: int = 0, action: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if action:
            params["action"] = action
        return self._request("GET", "/v1/events", params=params).json()

    def wait(
        self,
        audit_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the audit has finished; returns its final status document."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doc = self.status(audit_id)
            if on_update is not None:
                on_update(doc)
            if doc["status"] in FINISHED:
                return doc
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(f"audit {audit_id} still {doc['status']} after {timeout:.0f}s")
            time.sleep(poll)


def describe_progress(doc: dict[str, Any]) -> str:
    p = doc.get("progress", {})
    line = f"{doc['id']}  {doc['status']:<9}  runs {p.get('runs_done', 0)}/{p.get('runs_total', 0)}"
    if doc["status"] == "running" and p.get("current_run"):
        line += f"  {p['current_run']}"
        if p.get("epoch") is not None and p.get("epochs"):
            line += f" epoch {p['epoch']}/{p['epochs']}"
    if doc.get("error"):
        line += f"  error: {doc['error']}"
    return line
