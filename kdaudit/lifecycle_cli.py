"""CLI for owners' data: `kdaudit delete teacher|audit ID`, `kdaudit keys create|list|revoke`,
`kdaudit events`, and `kdaudit storage new-key|rotate` (encryption at rest).

`delete` and `events` go through the API with an API key, like `cancel`, so the trail names the
key. `keys` and `storage` are operator commands: they open the database and the file store
directly (the data folder / KDAUDIT_* settings), and their key changes are in the trail with
actor `cli`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from kdaudit.service_cli import (
    _apply_data_dir,
    _client,
    _client_guard,
    _fail,
    _guard,
    _print,
    _settings_migrated,
)


def _sessions(args: argparse.Namespace):
    from kdaudit.store.db import session_factory

    settings = _settings_migrated(args)
    return settings, session_factory(settings.resolved_database_url)


@_guard
def cmd_keys_create(args: argparse.Namespace) -> int:
    from kdaudit.store import events, keys
    from kdaudit.store.models import utcnow

    name = args.tenant.strip()
    if not name or len(name) > 128:
        return _fail("--tenant must be 1 to 128 characters")
    if args.name is not None and not 1 <= len(args.name) <= 128:
        return _fail("--name must be 1 to 128 characters")
    if args.expires_in_days is not None and args.expires_in_days <= 0:
        return _fail("--expires-in-days must be positive")
    expires = utcnow() + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    _settings, sessions = _sessions(args)
    with sessions() as session:
        key, row = keys.create_key(session, name, args.name, expires)
        events.record(session, row.tenant_id, "key.create", "key", row.id, actor="cli",
                      detail={"name": row.name, "prefix": row.prefix})  # fmt: skip
    print(key)
    until = f", expires {expires.isoformat(timespec='seconds')}" if expires else ""
    print(f"kdaudit: API key {row.id} for tenant {name!r}{until} (shown once; only its hash is stored)", file=sys.stderr)
    return 0


@_guard
def cmd_keys_list(args: argparse.Namespace) -> int:
    from kdaudit.store import keys

    _settings, sessions = _sessions(args)
    with sessions() as session:
        tenant = keys.tenant_by_name(session, args.tenant)
        if tenant is None:
            return _fail(f"no tenant {args.tenant!r}")
        rows = keys.list_keys(session, tenant.id)
    if args.json:
        _print([{"id": k.id, "name": k.name, "prefix": k.prefix, "status": keys.status(k),
                 **{f: (getattr(k, f).isoformat() if getattr(k, f) else None)
                    for f in ("created_at", "last_used_at", "expires_at", "revoked_at")}} for k in rows])  # fmt: skip
        return 0

    def when(t) -> str:
        return t.strftime("%Y-%m-%d %H:%M") if t else "-"

    print(f"{'id':32}  {'name':16}  {'prefix':12}  {'status':8}  {'created':16}  {'last used':16}  expires")
    for k in rows:
        print(f"{k.id:32}  {(k.name or '-')[:16]:16}  {k.prefix:12}  {keys.status(k):8}  {when(k.created_at):16}  "
              f"{when(k.last_used_at):16}  {when(k.expires_at)}")  # fmt: skip
    return 0


@_guard
def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from kdaudit.store import events, keys, repo
    from kdaudit.store.models import ApiKey

    if (args.id is None) == (args.key is None):
        return _fail("give the key's --id (from `kdaudit keys list`) or the key itself")
    _settings, sessions = _sessions(args)
    with sessions() as session:
        key_id = args.id
        if key_id is None:
            key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == repo.hash_key(args.key)))
        row = keys.get_key(session, key_id) if key_id else None
        if row is None:
            return _fail("no such key")
        if row.revoked_at is not None:
            return _fail(f"key {row.id} was already revoked")
        keys.revoke_by_id(session, row.id)
        events.record(session, row.tenant_id, "key.revoke", "key", row.id, actor="cli",
                      detail={"name": row.name, "prefix": row.prefix})  # fmt: skip
    print(f"kdaudit: key {row.id} revoked (refused from its next request)", file=sys.stderr)
    return 0


@_client_guard
def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.delete(args.kind, args.id, cancel=args.cancel)
    print(f"kdaudit: {args.kind} {args.id} deleted", file=sys.stderr)
    return 0


@_client_guard
def cmd_events(args: argparse.Namespace) -> int:
    with _client(args) as c:
        doc = c.events(limit=args.limit, action=args.action)
    if args.json:
        _print(doc)
        return 0
    for e in doc["items"]:
        print(f"{e['at']}  {e['action']:16} {e['object_type']:8} {e['object_id']}  key={e['key_id'] or e['actor']}  "
              f"from={e['address'] or '-'}")  # fmt: skip
    return 0


def cmd_storage_new_key(args: argparse.Namespace) -> int:
    from kdaudit.store.crypto import new_key

    print(new_key())
    return 0


@_guard
def cmd_storage_rotate(args: argparse.Namespace) -> int:
    from kdaudit.store.rotation import rotate

    _apply_data_dir(args)
    settings, _ = _sessions(args)
    done = rotate(settings)
    print(f"kdaudit: re-sealed {done.files} teacher file(s) and {done.reports} report(s) under key "
          f"{done.key_id}; older keys can now be removed", file=sys.stderr)  # fmt: skip
    return 0


def register(
    subparsers: argparse._SubParsersAction,
    keys_sub: argparse._SubParsersAction,
    data: argparse.ArgumentParser,
    client: argparse.ArgumentParser,
) -> None:
    """Add `keys create|list|revoke`, `delete`, `events` and `storage`."""
    p = keys_sub.add_parser("create", parents=[data], help="create a key for a tenant; prints it once")
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", help="a label to tell keys apart (e.g. ci, laptop)")
    p.add_argument("--expires-in-days", type=float, help="refuse the key after this many days")
    p.set_defaults(func=cmd_keys_create)
    p = keys_sub.add_parser("list", parents=[data], help="list a tenant's keys (ids, names, last use, expiry)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = keys_sub.add_parser("revoke", parents=[data], help="revoke a key by id (or by the key itself)")
    p.add_argument("key", nargs="?", help="the key itself (prefer --id)")
    p.add_argument("--id", help="the key's id, from `kdaudit keys list`")
    p.set_defaults(func=cmd_keys_revoke)

    p = subparsers.add_parser("delete", parents=[client], help="delete a teacher or an audit and its stored data")
    p.add_argument("kind", choices=["teacher", "audit"])
    p.add_argument("id")
    p.add_argument("--cancel", action="store_true", help="also stop its queued or running audits (else refused)")
    p.set_defaults(func=cmd_delete)

    p = subparsers.add_parser("events", parents=[client], help="show your access trail (uploads, downloads, deletes, keys)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--action")
    p.set_defaults(func=cmd_events)

    storage = subparsers.add_parser("storage", help="encryption at rest: make keys, re-seal under the newest key")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    p = storage_sub.add_parser("new-key", help="print a fresh storage key (base64url, 32 bytes)")
    p.set_defaults(func=cmd_storage_new_key)
    p = storage_sub.add_parser("rotate", parents=[data], help="re-seal every teacher file and report under the first key")
    p.set_defaults(func=cmd_storage_rotate)
