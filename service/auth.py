"""Bearer API keys. Keys are stored as sha256 digests; each maps to one tenant.

Every authenticated request first takes a token from its key's rate-limit bucket
(`kdaudit.service.limits`); an empty bucket is a 429 naming the limit.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from kdaudit.service.deps import get_session
from kdaudit.service.fast_auth import AddressGuard, KeyCache, SingleFlight, enforce
from kdaudit.service.problems import Problem
from kdaudit.store import keys
from kdaudit.store.models import ApiKey, Tenant, utcnow

_bearer = HTTPBearer(auto_error=False, description="API key from `kdaudit keys create --tenant NAME`.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kdaudit"'}


async def current_tenant(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    session: Session = Depends(get_session),
) -> Tenant:
    """The key's tenant. Async on purpose: a key in the cache (service/fast_auth.py) costs no
    thread hop and no query; only a miss goes to the database, in one threadpool hop."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Problem(401, "send your API key as `Authorization: Bearer <key>`", slug="unauthorized", headers=_CHALLENGE)
    key = credentials.credentials.strip()
    if len(key) > 512:
        raise Problem(401, "the API key is not valid (unknown or revoked)", slug="unauthorized", headers=_CHALLENGE)
    state = request.app.state
    digest = KeyCache.digest(key)
    buckets = getattr(state, "key_buckets", None)
    if buckets is not None:  # before the DB lookup: a flood from one key costs no queries
        await enforce(
            buckets, digest[:32], limit="rate_limit_per_second",
            detail=f"too many requests for this API key: the limit is {buckets.limiter.rate:g} requests per second "
            f"(bursts of {buckets.limiter.burst}; rate_limit_per_second, rate_limit_burst)",
        )  # fmt: skip
    cache: KeyCache | None = getattr(state, "key_cache", None)
    hit = cache.get(digest) if cache is not None else None
    if hit is not None:
        tenant, key_id = hit.tenant, hit.key_id
    else:
        guard: AddressGuard | None = getattr(state, "address_guard", None)
        address = request.client.host if request.client else "unknown"
        if guard is not None:  # an address that sent too many unknown keys: refused before any query
            guard.check(address)
        every = state.settings.key_last_used_every_seconds

        async def lookup():
            return await run_in_threadpool(_lookup, session, key, every)

        flights: SingleFlight | None = getattr(state, "key_flights", None)
        use, expires_in = await (flights.run(digest, lookup) if flights is not None else lookup())
        if use is None:
            if guard is not None:
                await guard.failed(address)
            raise Problem(401, "the API key is not valid (unknown or revoked)", slug="unauthorized", headers=_CHALLENGE)
        tenant, key_id = use.tenant, use.key_id
        if cache is not None:
            cache.put(digest, tenant, key_id, expires_in)
    request.state.tenant_id = tenant.id
    request.state.key_id = key_id  # for the access trail
    return tenant


def _lookup(session: Session, key: str, every: float):
    """(KeyUse or None, seconds until the key expires or None). Ends the read transaction: the
    pooled connection goes back now, never held while the request waits for another thread."""
    try:
        use = keys.authenticate(session, key, every=every)  # revoked/expired: None
        expires_in = None
        if use is not None:
            row = session.get(ApiKey, use.key_id)
            if row is not None and row.expires_at is not None:
                expires_in = (row.expires_at - utcnow()).total_seconds()
            session.expunge_all()  # the tenant outlives this session (cached, read-only)
        return use, expires_in
    finally:
        session.commit()


async def operator_tenant(request: Request, tenant: Tenant = Depends(current_tenant)) -> Tenant:
    """Operator-only routes: the tenant must be named in `operator_tenants` (403 otherwise)."""
    allowed = request.app.state.settings.operator_tenants
    if tenant.name not in allowed:
        raise Problem(
            403, "this operation is for operators: the key's tenant is not listed in operator_tenants",
            slug="operator-only", setting="operator_tenants",
        )  # fmt: skip
    return tenant
