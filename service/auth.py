"""Bearer API keys. Keys are stored as sha256 digests; each maps to one tenant.

Every authenticated request first takes a token from its key's rate-limit bucket
(`kdaudit.service.limits`); an empty bucket is a 429 naming the limit.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from kdaudit.service.deps import get_session
from kdaudit.service.limits import enforce_rate_limit
from kdaudit.service.problems import Problem
from kdaudit.store import repo
from kdaudit.store.models import Tenant

_bearer = HTTPBearer(auto_error=False, description="API key from `kdaudit keys create --tenant NAME`.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kdaudit"'}


def current_tenant(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    session: Session = Depends(get_session),
) -> Tenant:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Problem(401, "send your API key as `Authorization: Bearer <key>`", slug="unauthorized", headers=_CHALLENGE)
    key = credentials.credentials.strip()
    if len(key) > 512:
        raise Problem(401, "the API key is not valid (unknown or revoked)", slug="unauthorized", headers=_CHALLENGE)
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:  # before the DB lookup: a flood from one key costs no queries
        enforce_rate_limit(limiter, key)
    tenant = repo.tenant_for_key(session, key)
    # end the read transaction: the pooled connection goes back now, not after the route. A
    # request must never hold a connection while it waits for a threadpool thread (the route
    # runs in another one), or a burst of requests can deadlock on the pool.
    session.commit()
    if tenant is None:
        raise Problem(
            401, "the API key is not valid (unknown or revoked)", slug="unauthorized", headers=_CHALLENGE
        )
    request.state.tenant_id = tenant.id
    return tenant
