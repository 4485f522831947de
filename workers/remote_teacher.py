"""The remote teacher a worker audits: `RemoteTeacher` (models/remote_teacher.py) whose every new TCP
connection is checked against `remote_teacher_hosts` (store/remote_teachers.py).

The check runs inside the HTTP client's connection step: the host is resolved once, every
address is checked, and the socket is opened to a checked address, so a DNS answer that
changes between the check and the connection (rebinding) cannot reach an address the
allowlist does not permit. TLS still verifies the certificate against the URL's host name
(httpcore takes the server name from the request, not from the address connected to).
Proxies from the environment are not used (a proxy would make the check meaningless).
"""

from __future__ import annotations

import logging
from typing import Any

import httpcore
import httpx

from kdaudit import __version__
from kdaudit.core.errors import RemoteTeacherError
from kdaudit.models.remote_teacher import RemoteTeacher, RemoteTeacherSpec
from kdaudit.store import remote_teachers as rt

log = logging.getLogger("kdaudit.worker")

# httpx logs every request at INFO with its full URL, query string (which may carry a key)
# included, and the worker logs at INFO: keep the HTTP client's own records to warnings.
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level < logging.WARNING:
        logging.getLogger(_name).setLevel(logging.WARNING)


class CheckedBackend(httpcore.SyncBackend):
    """Resolve, check every address against the allowlist, connect to a checked address."""

    def __init__(self, entries: list[rt.HostEntry]) -> None:
        self.entries = entries

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        name, ip = rt.normalise_host(host)
        if ip is not None:
            addrs = [ip]
        else:
            try:
                addrs = rt.resolve(name, port)
            except (OSError, UnicodeError) as e:  # a DNS blip: a connection error, retried with backoff
                raise httpcore.ConnectError(f"cannot resolve {name} ({type(e).__name__})") from None
        # RemoteHostNotAllowed is a RemoteTeacherError: not retried, the audit fails with its message
        rt.check_addresses(name, port, addrs, self.entries)
        last: Exception | None = None
        for addr in addrs:
            try:
                return super().connect_tcp(str(addr), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last


def checked_transport(entries: list[rt.HostEntry], limits: httpx.Limits) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(limits=limits)
    if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):  # pragma: no cover
        raise RemoteTeacherError("this httpx version cannot be given a checked connection backend")
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=CheckedBackend(entries),
    )
    return transport


class CheckedRemoteTeacher(RemoteTeacher):
    """A RemoteTeacher whose connections go through `CheckedBackend`."""

    def __init__(self, spec: RemoteTeacherSpec, num_classes: int, entries: list[rt.HostEntry]):
        super().__init__(spec, num_classes)
        self._entries = entries

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                s = self.spec
                limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
                self._client = httpx.Client(
                    timeout=httpx.Timeout(s.timeout_s),
                    follow_redirects=False,
                    headers={"User-Agent": f"kdaudit/{__version__}", **s.headers},
                    transport=checked_transport(self._entries, limits),
                    trust_env=False,
                )
            return self._client


def build_teacher(spec_doc: dict[str, Any], num_classes: int, allowed: list[str]) -> CheckedRemoteTeacher:
    """The teacher for an audit, after checking its URL against the allowlist *now* (it may have
    changed since registration, and so may DNS). An unresolvable name is left to the connection
    step, which retries it like any connection error."""
    try:
        spec = RemoteTeacherSpec.model_validate(spec_doc)
    except ValueError:
        raise RemoteTeacherError("the stored remote teacher settings are invalid; register the teacher again") from None
    entries = rt.parse_entries(allowed)
    rt.check_url(spec.url, entries, require_resolution=False)
    log.info("remote teacher %s (%s) allowed by %s", spec.public_url(), spec.response, rt.SETTING)
    return CheckedRemoteTeacher(spec, num_classes, entries)

