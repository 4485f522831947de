"""Operator commands: `kdaudit keys create|list|revoke` and `kdaudit storage new-key|rotate`.

They open the database and the file store directly (the data folder / KDAUDIT_* settings), not
the API, because they manage what the API itself trusts: the API keys and the storage keys of
encryption at rest. Their key changes are in the access trail with actor `cli`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from kdaudit.api_client_args import print_json
from kdaudit.command_errors import fail, one_line_errors
from kdaudit.service_state import apply_state_options, data_dir_option, settings_migrated


def _sessions(args: argparse.Namespace):
    from kdaudit.store.db import session_factory

    settings = settings_migrated(args)
    return settings, session_factory(settings.resolved_database_url)


@one_line_errors
def cmd_keys_create(args: argparse.Namespace) -> int:
    from kdaudit.store import events, keys
    from kdaudit.store.models import utcnow

    name = args.tenant.strip()
    if not name or len(name) > 128:
        return fail("--tenant must be 1 to 128 characters")
    if args.name is not None and not 1 <= len(args.name) <= 128:
        return fail("--name must be 1 to 128 characters")
    if args.expires_in_days is not None and args.expires_in_days <= 0:
        return fail("--expires-in-days must be positive")
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


@one_line_errors
def cmd_keys_list(args: argparse.Namespace) -> int:
    from kdaudit.store import keys

    _settings, sessions = _sessions(args)
    with sessions() as session:
        tenant = keys.tenant_by_name(session, args.tenant)
        if tenant is None:
            return fail(f"no tenant {args.tenant!r}")
        rows = keys.list_keys(session, tenant.id)
    if args.json:
        print_json([{"id": k.id, "name": k.name, "prefix": k.prefix, "status": keys.status(k),
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


@one_line_errors
def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from kdaudit.store import events, keys, repo
    from kdaudit.store.models import ApiKey

    if (args.id is None) == (args.key is None):
        return fail("give the key's --id (from `kdaudit keys list`) or the key itself")
    _settings, sessions = _sessions(args)
    with sessions() as session:
        key_id = args.id
        if key_id is None:
            key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == repo.hash_key(args.key)))
        row = keys.get_key(session, key_id) if key_id else None
        if row is None:
            return fail("no such key")
        if row.revoked_at is not None:
            return fail(f"key {row.id} was already revoked")
        keys.revoke_by_id(session, row.id)
        events.record(session, row.tenant_id, "key.revoke", "key", row.id, actor="cli",
                      detail={"name": row.name, "prefix": row.prefix})  # fmt: skip
    print(f"kdaudit: key {row.id} revoked (refused from its next request)", file=sys.stderr)
    return 0


def cmd_storage_new_key(args: argparse.Namespace) -> int:
    from kdaudit.store.crypto import new_key

    print(new_key())
    return 0


@one_line_errors
def cmd_storage_rotate(args: argparse.Namespace) -> int:
    from kdaudit.store.rotation import rotate

    apply_state_options(args)
    settings, _ = _sessions(args)
    done = rotate(settings)
    print(f"kdaudit: re-sealed {done.files} teacher file(s) and {done.reports} report(s) under key "
          f"{done.key_id}; older keys can now be removed", file=sys.stderr)  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `keys create|list|revoke` and `storage new-key|rotate`."""
    data = data_dir_option()
    keys = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
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

    storage = subparsers.add_parser("storage", help="encryption at rest: make keys, re-seal under the newest key")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    p = storage_sub.add_parser("new-key", help="print a fresh storage key (base64url, 32 bytes)")
    p.set_defaults(func=cmd_storage_new_key)
    p = storage_sub.add_parser("rotate", parents=[data], help="re-seal every teacher file and report under the first key")
    p.set_defaults(func=cmd_storage_rotate)
