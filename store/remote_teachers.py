"""Remote (HTTP) teachers in the service: the host allowlist that keeps them from becoming an
SSRF hole, and where their secrets live. Shared by the API (registration, audit creation) and
the workers (before and while connecting); imports neither torch nor httpx.

Allowlist (`remote_teacher_hosts`, env ``KDAUDIT_REMOTE_TEACHER_HOSTS``, comma-separated): each
entry is ``host`` (any port) or ``host:port``; a host is a DNS name or an IP literal (IPv6 in
brackets when a port follows: ``[::1]:8700``). Empty (the default) disables remote teachers.
A URL is allowed when

1. its scheme is http or https and its host (and port, when the entry names one) matches an
   entry by *name*: ``127.1``, ``2130706433`` or ``localhost`` do not match ``127.0.0.1``;
2. every address the host resolves to is public (`ipaddress.is_global`) or is itself listed
   as an IP literal entry (same port rule). So ``teacher.internal`` resolving to 10.0.0.5
   needs both ``teacher.internal`` and ``10.0.0.5`` listed, and a listed name whose DNS
   answer later turns into 127.0.0.1 or 169.254.169.254 (cloud metadata) is refused.

The API checks at registration; the worker checks again before the audit and, through
`kdaudit.workers.remote_teacher`, on every new connection, connecting to exactly the address
it checked (no second lookup that DNS rebinding could answer differently).

Secrets: the full spec (URL with its query string, headers such as API keys, retry knobs) is
a JSON file ``<storage_dir>/secrets/remote-teacher-<teacher id>.json`` (mode 0600, folder
0700), on the same volume the workers already read teacher files from. The database row
holds only public fields (the URL without its query, format ``remote-http``), so database
dumps, API answers, logs and reports never carry a header value.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kdaudit.core.errors import RemoteTeacherError

REMOTE_FORMAT = "remote-http"
REMOTE_ARCH = "remote"
SETTING = "remote_teacher_hosts"
ENV_VAR = "KDAUDIT_REMOTE_TEACHER_HOSTS"
SPEC_VERSION = 1
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RemoteHostNotAllowed(RemoteTeacherError):
    """The URL's host is not allowed by `remote_teacher_hosts` (a policy refusal: HTTP 403)."""


class RemoteHostUnresolvable(RemoteTeacherError):
    """The URL's host does not resolve (at registration: HTTP 422)."""


@dataclass(frozen=True)
class HostEntry:
    """One allowlist entry: a normalised host (name or canonical IP text) and an optional port."""

    host: str
    port: int | None = None
    ip: IPAddress | None = None

    def __str__(self) -> str:
        h = f"[{self.host}]" if self.ip is not None and self.ip.version == 6 else self.host
        return h if self.port is None else f"{h}:{self.port}"

    def matches(self, host: str, port: int) -> bool:
        return self.host == host and (self.port is None or self.port == port)


#: IPv6 prefixes whose addresses carry an IPv4 address that the network delivers to: judged by
#: that IPv4 address (NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48, 6to4 2002::/16,
#: IPv4-mapped ::ffff:0:0/96, the deprecated IPv4-compatible ::/96; Teredo by its server)
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_COMPAT = ipaddress.IPv6Network("::/96")


def _unmap(ip: IPAddress) -> IPAddress:
    """An IPv6 address that embeds an IPv4 one is that IPv4 address (so ::ffff:127.0.0.1,
    64:ff9b::7f00:1 and 2002:7f00:1:: are loopback, 64:ff9b::a9fe:a9fe is the metadata address)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64) or (ip in _COMPAT and int(ip) > 1):  # :: and ::1 are not IPv4
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[0]  # the Teredo server; the client part is obfuscated
    return ip


def normalise_host(host: str) -> tuple[str, IPAddress | None]:
    """Lower-case name without a trailing dot (IDNA-encoded), or the canonical text of an IP.
    ValueError if it is neither."""
    h = host.strip().strip("[]").strip()
    try:
        ip = _unmap(ipaddress.ip_address(h.split("%", 1)[0] if "%" in h else h))
    except ValueError:
        ip = None
    if ip is not None:
        if "%" in h:
            raise ValueError(f"{host!r}: scoped IPv6 addresses (%zone) are not supported")
        return str(ip), ip
    name = h.rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{host!r} is not a valid host name") from None
    if not _NAME.match(name):
        raise ValueError(f"{host!r} is not a valid host name or IP address")
    return name, None


def parse_entry(text: str) -> HostEntry:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address (no port)."""
    t = text.strip()
    if not t:
        raise ValueError("empty entry")
    if "/" in t or "@" in t or "*" in t:
        raise ValueError(f"{text!r}: give a host or host:port (no scheme, path, wildcard or network)")
    port: int | None = None
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unclosed [")
        host, rest = t[1:end], t[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [address]:port")
            port = _port(rest[1:], text)
    elif t.count(":") == 1:
        host, p = t.split(":")
        port = _port(p, text)
    else:
        host = t  # a name, an IPv4 address or a bare IPv6 address
    name, ip = normalise_host(host)
    return HostEntry(name, port, ip)


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 1 <= int(p) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return int(p)


def parse_entries(values: Iterable[str]) -> list[HostEntry]:
    return [parse_entry(v) for v in values]


def split_setting(value: Any) -> list[str]:
    """The setting's value from the environment (``a, b:8700``, or a JSON list) or from code;
    returns the canonical entries. ValueError on a bad entry."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                loaded = json.loads(s)
            except ValueError:
                loaded = None
            if isinstance(loaded, list):
                value = [str(x) for x in loaded]
            else:
                value = [s]  # e.g. "[::1]:8700"
        else:
            value = s.split(",")
    if not isinstance(value, list | tuple | set):
        raise ValueError("expected a comma-separated string or a list of host or host:port entries")
    out = []
    for v in value:
        if isinstance(v, str) and not v.strip():
            continue
        entry = str(parse_entry(str(v)))
        if entry not in out:
            out.append(entry)
    return out


# ------------------------------------------------------------------------ the URL check


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # normalised
    port: int
    ip: IPAddress | None


def disabled_message() -> str:
    return (
        f"remote teachers are disabled on this server: the setting {SETTING} (env {ENV_VAR}) lists no "
        "hosts; an administrator must list the prediction endpoint's host there"
    )


def target_of(url: str) -> Target:
    """Scheme, normalised host and effective port of an http(s) URL; RemoteTeacherError if not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise RemoteTeacherError(f"invalid URL ({e})") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise RemoteTeacherError("the URL must be http:// or https:// with a host")
    if port == 0:
        raise RemoteTeacherError("invalid URL: port 0")
    if any(ord(ch) <= 32 or ord(ch) == 127 for ch in url.strip()):
        raise RemoteTeacherError("invalid URL: it contains whitespace or control characters")
    try:
        host, ip = normalise_host(parts.hostname)
    except ValueError as e:
        raise RemoteTeacherError(f"invalid URL host: {e}") from None
    return Target(parts.scheme, host, port if port is not None else _DEFAULT_PORTS[parts.scheme], ip)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_name(url: str, entries: list[HostEntry]) -> Target:
    """Step 1, no DNS: the URL's host (and port) must match an entry by name."""
    if not entries:
        raise RemoteHostNotAllowed(disabled_message())
    t = target_of(url)
    if not any(e.matches(t.host, t.port) for e in entries):
        raise RemoteHostNotAllowed(
            f"{_show(t.host, t.port)} is not in {SETTING} (env {ENV_VAR}); an administrator must add it "
            "(as host or host:port) before teachers there can be registered or audited"
        )
    return t


def address_allowed(ip: IPAddress, port: int, entries: list[HostEntry]) -> bool:
    """A resolved address may be reached: listed itself (IP literal entry), or public."""
    ip = _unmap(ip)
    if any(e.ip is not None and e.ip == ip and (e.port is None or e.port == port) for e in entries):
        return True
    return bool(ip.is_global) and not ip.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (socket.gaierror when it does not). Patched in tests."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for info in infos:
        addr = info[4][0]
        ip = _unmap(ipaddress.ip_address(str(addr).split("%", 1)[0]))
        if ip not in out:
            out.append(ip)
    return out


def check_addresses(host: str, port: int, addrs: list[IPAddress], entries: list[HostEntry]) -> list[IPAddress]:
    """Step 2: every resolved address must be allowed; returns them (in resolver order)."""
    if not addrs:
        raise RemoteHostUnresolvable(f"{host} resolves to no address")
    bad = [ip for ip in addrs if not address_allowed(ip, port, entries)]
    if bad:
        shown = ", ".join(str(ip) for ip in bad[:3])
        raise RemoteHostNotAllowed(
            f"{_show(host, port)} resolves to {shown}, a non-public address that {SETTING} (env {ENV_VAR}) "
            "does not list; an administrator must list that address too to allow it"
        )
    return addrs


def check_url(
    url: str,
    entries: list[HostEntry],
    *,
    resolver: Callable[[str, int], list[IPAddress]] | None = None,
    require_resolution: bool = True,
) -> Target:
    """The whole check (name, then every resolved address). Raises RemoteHostNotAllowed (403),
    or RemoteHostUnresolvable when the name does not resolve and `require_resolution`."""
    t = check_name(url, entries)
    if t.ip is not None:
        check_addresses(t.host, t.port, [t.ip], entries)
        return t
    try:
        addrs = (resolver or resolve)(t.host, t.port)
    except (OSError, UnicodeError) as e:
        if require_resolution:
            raise RemoteHostUnresolvable(f"cannot resolve {t.host} ({type(e).__name__})") from None
        return t  # the worker's connection guard resolves (and checks) again, with retries
    check_addresses(t.host, t.port, addrs, entries)
    return t


# ------------------------------------------------------------------------ spec storage


def spec_sha256(public_url: str, response: str) -> str:
    """The teacher row's `sha256`: of the canonical public spec (URL without query, response)."""
    canon = json.dumps({"response": response, "url": public_url}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def secret_name(teacher_id: str) -> str:
    return f"remote-teacher-{teacher_id}"


def save_spec(files: Any, teacher_id: str, spec_doc: dict[str, Any]) -> None:
    """Write the full spec (headers included) as a 0600 secret file of the FileStore `files`."""
    doc = {"version": SPEC_VERSION, "spec": spec_doc}
    files.put_secret(secret_name(teacher_id), json.dumps(doc, sort_keys=True).encode())


def load_spec_doc(files: Any, teacher_id: str) -> dict[str, Any] | None:
    """The stored spec dict (headers included: never return it to a client), or None if missing."""
    raw = files.read_secret(secret_name(teacher_id))
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    spec = doc.get("spec") if isinstance(doc, dict) else None
    return spec if isinstance(spec, dict) else None


def public_info(spec_doc: dict[str, Any]) -> dict[str, Any]:
    """What a client may see of a stored spec: no header values, no query string."""
    from urllib.parse import urlsplit as _split

    parts = _split(str(spec_doc.get("url", "")))
    url = f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?<redacted>" if parts.query else "")
    info = {k: spec_doc[k] for k in ("response", "timeout_s", "max_retries", "backoff_s", "concurrency", "max_batch") if k in spec_doc}
    return {"url": url, **info, "header_names": sorted((spec_doc.get("headers") or {}).keys())}
