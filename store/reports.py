"""Reports sealed at rest: the `reports.body` column holds the report encrypted with the storage
keyring, bound to its audit id (a sealed body copied to another row does not open). The
verdict and schema columns stay readable (listing, metrics); bodies written before encryption
was enabled are returned as they are."""

from __future__ import annotations

from typing import Any

from kdaudit.core.settings import Settings
from kdaudit.store.crypto import keyring


def _context(audit_id: str) -> str:
    return f"kdaudit-report/{audit_id}"


def seal_report(settings: Settings, audit_id: str, body: dict[str, Any]) -> dict[str, Any]:
    ring = keyring(settings)
    return ring.seal_json(body, _context(audit_id)) if ring is not None else body


def open_report(settings: Settings, audit_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    from kdaudit.store.crypto import StorageKeyError, is_sealed_json

    if not is_sealed_json(stored):
        return stored
    ring = keyring(settings)
    if ring is None:
        raise StorageKeyError("the report is sealed but encrypt_at_rest is off: no storage key to open it")
    return ring.open_json(stored, _context(audit_id))
