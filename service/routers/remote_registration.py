"""Checking a remote teacher's registration (`POST /v1/teachers/remote`) before anything is
stored: remote teachers enabled, headers the tenant may set, the endpoint's settings, the
architecture, dataset and input contract, and the URL against `remote_teacher_hosts`.

The endpoint itself is not contacted here; that happens only when an audit runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kdaudit.core.errors import KdauditError
from kdaudit.service.contract_fields import check_fits
from kdaudit.service.problems import Problem
from kdaudit.service.schemas import RemoteTeacherCreate
from kdaudit.store import remote_teachers as rt
from kdaudit.store.settings import ServiceSettings

# Forbidden in a remote teacher's `headers`: the HTTP client sets them, or they would let a
# tenant aim an allowed address at another virtual host.
_RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection",
                               "te", "trailer", "upgrade", "keep-alive", "proxy-authorization", "proxy-connection"})  # fmt: skip


@dataclass(frozen=True)
class RemoteRegistration:
    """A registration that passed every check: what the teachers router stores."""

    spec: Any  # kdaudit.models.remote_teacher.RemoteTeacherSpec (imported on use)
    public_url: str
    architecture: str
    dataset: Any  # kdaudit.distill.data's spec of body.dataset


def check_registration(body: RemoteTeacherCreate, settings: ServiceSettings) -> RemoteRegistration:
    """Every check of a registration, in the order the problems are reported (403 when remote
    teachers are off or the host is not allowed, else 422 naming the rule, never a secret)."""
    entries = rt.parse_entries(settings.remote_teacher_hosts)
    if not entries:  # before anything else: a server without remote teachers says so, whatever the body
        raise _host_problem(rt.RemoteHostNotAllowed(rt.disabled_message()))
    from kdaudit.distill.data import dataset_spec
    from kdaudit.models.remote_teacher import RemoteTeacherSpec

    headers = dict(body.headers or {})
    reserved = sorted(k for k in headers if k.lower() in _RESERVED_HEADERS)
    if reserved:
        raise Problem(422, f"headers may not set {', '.join(reserved)} (the HTTP client sets them)", slug="validation-error")
    knobs = {k: getattr(body, k) for k in ("timeout_s", "max_retries", "backoff_s", "concurrency", "max_batch")}
    try:
        spec = RemoteTeacherSpec(
            url=body.url, response=body.response, headers=headers, **{k: v for k, v in knobs.items() if v is not None}
        )
    except ValidationError as e:
        # the messages name the rule, never the value (no header value can leak here)
        msgs = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()[:5])
        raise Problem(422, f"invalid remote teacher: {msgs}", slug="validation-error") from None
    public_url = spec.public_url()
    if len(public_url) > 255:
        raise Problem(422, f"the URL without its query string is {len(public_url)} characters; at most 255", slug="validation-error")
    architecture = rt.REMOTE_ARCH
    if body.architecture is not None and body.architecture.strip().lower() != rt.REMOTE_ARCH:
        from kdaudit.models.registry import parse_arch

        try:
            architecture = parse_arch(body.architecture)
        except KdauditError as e:
            raise Problem(422, str(e), slug="validation-error") from None
    try:
        ds = dataset_spec(body.dataset)
    except KdauditError as e:
        raise Problem(422, str(e), slug="validation-error") from None
    if body.preprocess is not None:
        check_fits(body.preprocess, ds.in_channels)
    try:  # the allowlist, then every address the host resolves to (blocking DNS: the route runs in a thread)
        rt.check_url(spec.url, entries)
    except KdauditError as e:
        raise _host_problem(e) from None
    return RemoteRegistration(spec=spec, public_url=public_url, architecture=architecture, dataset=ds)


def _host_problem(e: KdauditError) -> Problem:
    """A refused remote URL: 403 naming the setting when the allowlist refuses it, else 422."""
    if isinstance(e, rt.RemoteHostNotAllowed):
        return Problem(403, str(e), slug="remote-host-not-allowed", setting=rt.SETTING)
    return Problem(422, str(e), slug="invalid-remote-teacher", setting=rt.SETTING)
