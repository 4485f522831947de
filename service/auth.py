"""Bearer API keys. Keys are stored as sha256 digests; each maps to one tenant."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from kdaudit.service.deps import get_session
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
    tenant = repo.tenant_for_key(session, credentials.credentials.strip())
    if tenant is None:
        raise Problem(
            401, "the API key is not valid (unknown or revoked)", slug="unauthorized", headers=_CHALLENGE
        )
    request.state.tenant_id = tenant.id
    return tenant
