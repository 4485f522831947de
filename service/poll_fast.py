"""The status poll's fast path: `GET /v1/audits/{id}` answered below FastAPI's router.

Status polls are most of an API's traffic (every client, every few seconds). Routing, the
dependency solver and the response machinery cost a poll about 1 ms of CPU before it reads its
one row. This ASGI middleware answers the common case itself, with the same pieces the route
uses (service/fast_auth.py's key cache and token buckets, the audit's row, `schemas.status_answer`); the row is
one autocommit SELECT on a reset-free engine (`repo.poll_audit`, `store.db.read_engine`):

- only `GET /v1/audits/<id>` with no query string, a well-formed id and a Bearer key that is in
  the key cache (so it was looked up, valid, at most `auth_cache_seconds` ago);
- the key's rate-limit bucket is charged exactly as on the normal path (a refused poll falls
  through and is charged once more there, which refuses it);
- the audit must exist and belong to the key's tenant.

Identical polls that arrive while one is reading share its read (single flight): 200 clients
watching one audit cost one row read (and one serialisation) per round trip to the database, not
200. A joined read began at most one query's time (~1 ms) before the poll arrived, the freshness a
poll has anyway; polls of different audits or tenants never share.

Anything else -- no or unknown key, an empty bucket, a query string, another tenant's or no
audit, any error -- falls through to the normal route, which answers (and words the problem)
as before. The request id, metrics and security-header middlewares wrap this one, so the
answer carries the same headers; metrics see the route's template.
"""

from __future__ import annotations

import asyncio
import re

from starlette.concurrency import run_in_threadpool

from kdaudit.service.fast_auth import KeyCache
from kdaudit.service.schemas import status_answer
from kdaudit.store import repo

_PATH = re.compile(r"^/v1/audits/([A-Za-z0-9_-]{1,64})$")


class StatusPollFastPath:
    def __init__(self, app, state) -> None:
        self.app, self.state = app, state
        self._route = None
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}

    def _route_for_metrics(self, scope):
        if self._route is None:
            router_app = scope.get("app")
            for r in getattr(router_app, "routes", ()):
                if getattr(r, "path", None) == "/v1/audits/{audit_id}" and "GET" in getattr(r, "methods", ()):
                    self._route = r
                    break
        return self._route

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        m = _PATH.match(scope["path"])
        if m is None:
            await self.app(scope, receive, send)
            return
        body, headers = await self._answer(scope, m.group(1))
        if body is None:
            await self.app(scope, receive, send)
            return
        route = self._route_for_metrics(scope)
        if route is not None:
            scope["route"] = route
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})  # a copy: outer middlewares append to it, joined polls share it
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope, audit_id: str):
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if auth is None or len(auth) > 600 or not auth[:7].lower() == b"bearer ":
            return None, None
        try:
            key = auth[7:].decode("ascii").strip()
        except UnicodeDecodeError:
            return None, None
        state = self.state
        cache: KeyCache | None = getattr(state, "key_cache", None)
        if not key or cache is None:
            return None, None
        digest = KeyCache.digest(key)
        hit = cache.get(digest)
        if hit is None:
            return None, None
        buckets = getattr(state, "key_buckets", None)
        if buckets is not None:
            allowed, _wait = await buckets.hit(digest[:32])
            if not allowed:
                return None, None  # the normal path refuses with the problem (and Retry-After)
        flight = (hit.tenant.id, audit_id)
        shared = self._inflight.get(flight)
        if shared is not None:
            return await asyncio.shield(shared)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[flight] = fut
        try:
            answer = await self._read(hit.tenant.id, audit_id)
        except BaseException:
            answer = (None, None)
            raise
        finally:
            del self._inflight[flight]
            fut.set_result(answer)  # joined polls fall through too when this read failed
        return answer

    async def _read(self, tenant_id: str, audit_id: str):
        state = self.state
        try:
            audit = await run_in_threadpool(repo.poll_audit, state.read_engine, tenant_id, audit_id)
        except Exception:
            return None, None  # the normal path answers (and logs) whatever this was
        if audit is None:
            return None, None
        body, retry = status_answer(audit, state.settings.retry_after_seconds)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry is not None:
            headers.append((b"retry-after", retry.encode()))
        return body, headers
