"""Quotas and rate limits of the API. Every refusal is a problem+json 4xx whose body names
the limit (`limit`: the setting's name, `limit_value`, and what was asked for):

| limit (setting)                       | status | where |
|---------------------------------------|--------|-------|
| max_upload_bytes                      | 413    | POST /v1/teachers, while streaming |
| max_parameters                        | 413    | POST /v1/teachers, in the loader process |
| max_json_body_bytes                   | 413    | any other request body (`BodySizeLimit`) |
| max_runs_per_audit                    | 422    | POST /v1/audits, from the resolved plan |
| max_teacher_queries_per_audit         | 422    | POST /v1/audits, estimated from the plan |
| max_concurrent_audits_per_tenant      | 429    | POST /v1/audits (queued + running) |
| rate_limit_per_second/rate_limit_burst| 429    | every /v1 request, per API key |

Student size, compute and storage quotas: service/quotas.py; loader children:
service/loader_gate.py; the per-address lookup limit and the key cache: service/fast_auth.py.

Rate limiting is a token bucket per API key. `memory` keeps the buckets in the API process:
right for one process; with N processes behind a balancer each allows the full rate, so a
multi-process deployment should use `redis` (the default whenever `KDAUDIT_BROKER_URL` is a
redis:// URL): one bucket per key shared by all processes, updated atomically by a Lua script.
If Redis is unreachable the limiter lets requests through (logged): the database and broker
checks elsewhere still fail loudly, and an outage of a limiter must not take the API down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any

from kdaudit.core.settings import Settings
from kdaudit.service.problems import PROBLEM_JSON, Problem

log = logging.getLogger("kdaudit.api")


def limit_problem(status: int, limit: str, value: int | float, detail: str, *, requested: Any = None,
                  headers: dict[str, str] | None = None, slug: str = "limit-exceeded", **more: Any) -> Problem:  # fmt: skip
    """A problem naming the limit: body fields `limit` (setting name), `limit_value`, `requested`."""
    extra: dict[str, Any] = {"limit": limit, "limit_value": value, **more}
    if requested is not None:
        extra["requested"] = requested
    titles = {413: "Content Too Large", 422: "Limit exceeded", 429: "Too Many Requests"}
    return Problem(status, detail, slug=slug, title=titles.get(status), headers=headers, **extra)


def estimate_teacher_queries(config: dict[str, Any]) -> int:
    """Upper estimate of billed teacher queries: the engine's per-run estimate (distill/budget.py
    `planned_work`, distill/planning/sizes.py `run_work`) summed over every planned run, the base
    setting's and every sweep/panel variant's."""
    from kdaudit.distill.budget import planned_work
    from kdaudit.distill.config import AuditConfig

    return sum(work.teacher_queries for _, work in planned_work(AuditConfig.model_validate(config)))


def check_audit_plan(config: dict[str, Any], runs_total: int, settings: Settings) -> None:
    """Raise a 422 naming the limit when the resolved audit is too big."""
    if runs_total > settings.max_runs_per_audit:
        raise limit_problem(
            422,
            "max_runs_per_audit",
            settings.max_runs_per_audit,
            f"the audit plans {runs_total} training runs (seeds x students x (scratch + attacks)), over the "
            f"limit of {settings.max_runs_per_audit} runs per audit (max_runs_per_audit)",
            requested=runs_total,
        )
    queries = estimate_teacher_queries(config)
    if queries > settings.max_teacher_queries_per_audit:
        raise limit_problem(
            422,
            "max_teacher_queries_per_audit",
            settings.max_teacher_queries_per_audit,
            f"the audit would query the teacher about {queries:,} times (epochs x training images x "
            f"teacher-using runs), over the limit of {settings.max_teacher_queries_per_audit:,} "
            "(max_teacher_queries_per_audit); use fewer epochs, seeds, students or a smaller fraction",
            requested=queries,
        )


# ---------------------------------------------------------------------------------- rate limit


class RateLimiter:
    """Token bucket: `rate` tokens per second, at most `burst`; one request costs one token."""

    backend = "none"

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), int(burst)

    def hit(self, key: str) -> tuple[bool, float, int]:
        """(allowed, seconds until a token is available if not, tokens left)."""
        return True, 0.0, self.burst


class MemoryRateLimiter(RateLimiter):
    backend = "memory"
    MAX_KEYS = 100_000

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__(rate, burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str) -> tuple[bool, float, int]:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.MAX_KEYS:  # forget the least recently seen keys
                self._buckets.popitem(last=False)
        wait = 0.0 if allowed else (1.0 - tokens) / self.rate
        return allowed, wait, int(tokens)


#: take up to ARGV[3] tokens at once from the key's bucket (Redis clock, atomic); returns
#: {granted, tokens left}. The per-request limiter takes 1 (granted is then 1 exactly when a token
#: was there); the event-loop buckets (service/fast_auth.py) take a small lease.
TAKE_TOKENS_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = math.min(want, math.floor(tokens))
if granted < 0 then granted = 0 end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {granted, tostring(tokens)}
"""


class RedisRateLimiter(RateLimiter):
    """One bucket per key in Redis, shared by every API process; atomic (Lua, Redis clock)."""

    backend = "redis"

    def __init__(self, rate: float, burst: int, url: str, prefix: str = "kdaudit:ratelimit:") -> None:
        super().__init__(rate, burst)
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(TAKE_TOKENS_LUA)
        self._prefix = prefix
        self._warned = 0.0

    def hit(self, key: str) -> tuple[bool, float, int]:
        try:
            allowed, tokens = self._script(keys=[self._prefix + key], args=[self.rate, self.burst, 1])
        except Exception as e:  # fail open: the limiter must not be a single point of failure
            now = time.monotonic()
            if now - self._warned > 30:
                self._warned = now
                log.warning("rate limiter: redis unavailable (%s); letting requests through", type(e).__name__)
            return True, 0.0, self.burst
        left = float(tokens)
        wait = 0.0 if allowed else (1.0 - left) / self.rate
        return bool(allowed), wait, int(left)


def make_rate_limiter(settings: Settings) -> RateLimiter:
    if settings.rate_limit_per_second <= 0:
        return RateLimiter(0, settings.rate_limit_burst)
    backend = settings.rate_limit_backend
    url = settings.broker_url or ""
    if backend == "auto":
        backend = "redis" if url.startswith(("redis://", "rediss://", "unix://")) else "memory"
    if backend == "redis":
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("rate_limit_backend='redis' needs KDAUDIT_BROKER_URL to be a redis:// URL")
        return RedisRateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst, url)
    return MemoryRateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)


def enforce_rate_limit(limiter: RateLimiter, api_key: str) -> None:
    """Raise 429 (naming the limit, with Retry-After) when the key's bucket is empty."""
    if limiter.backend == "none":
        return
    bucket = hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:32]
    allowed, wait, _left = limiter.hit(bucket)
    if allowed:
        return
    retry = max(1, math.ceil(wait))
    raise limit_problem(
        429,
        "rate_limit_per_second",
        limiter.rate,
        f"too many requests for this API key: the limit is {limiter.rate:g} requests per second "
        f"(bursts of {limiter.burst}; rate_limit_per_second, rate_limit_burst); retry in {retry} s",
        headers={"Retry-After": str(retry)},
        slug="rate-limited",
        burst=limiter.burst,
    )


# ---------------------------------------------------------------------------------- body size


class BodySizeLimit:
    """ASGI middleware: request bodies (other than the teacher upload, which has its own,
    larger limit) over `max_bytes` get a 413 problem before any route parses them."""

    def __init__(self, app, max_bytes: int, exempt: tuple[tuple[str, str], ...] = (("POST", "/v1/teachers"),)) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") or (
            (scope["method"], scope["path"].rstrip("/")) in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        # read (at most max_bytes of) the body now, then replay it to the app
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed():
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, scope, send) -> None:
        rid = (scope.get("state") or {}).get("request_id")
        body = {
            "type": "urn:kdaudit:problem:limit-exceeded",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"the request body is larger than the limit of {self.max_bytes} bytes (max_json_body_bytes)",
            "instance": scope["path"],
            "limit": "max_json_body_bytes",
            "limit_value": self.max_bytes,
        }
        if rid:
            body["request_id"] = rid
        data = json.dumps(body).encode()
        headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(data)).encode()),
                   (b"connection", b"close")]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": data})
