"""Storage-key rotation: re-seal every stored teacher file and report under the newest key.

Rotation is: put the new key first (`KDAUDIT_STORAGE_KEYS=NEW,OLD`, or a new first line in the
key file) and restart the API and workers -- from then on new things are sealed with NEW and old
ones still open with OLD -- then run `kdaudit storage rotate`, after which OLD can be removed.
Files and reports written before encryption was enabled are sealed by the same command.
Each file is re-sealed to a temporary file and renamed over the old one, so a reader sees the
old or the new file, never half of one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select, update

from kdaudit.core.settings import Settings
from kdaudit.store.crypto import StorageKeyError, is_sealed_json, keyring
from kdaudit.store.db import session_factory
from kdaudit.store.files import FileStore
from kdaudit.store.models import ReportRow
from kdaudit.store.reports import open_report, seal_report
from kdaudit.store.sealed_files import reseal

_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Rotated:
    key_id: str
    files: int = 0
    reports: int = 0


def rotate(settings: Settings) -> Rotated:
    ring = keyring(settings)
    if ring is None:
        raise StorageKeyError("encrypt_at_rest is off: there is nothing to rotate")
    out = Rotated(key_id=ring.primary_id.hex())
    files = FileStore(settings.resolved_storage_dir)
    if files.root.is_dir():
        for path in sorted(files.root.glob("??/??/*")):
            if _SHA.match(path.name) and reseal(files, path.name, ring):
                out.files += 1
    with session_factory(settings.resolved_database_url)() as session:
        ids = list(session.scalars(select(ReportRow.audit_id)).all())
        session.commit()
        for audit_id in ids:
            row = session.get(ReportRow, audit_id)
            if row is None:
                continue
            if is_sealed_json(row.body) and row.body.get("kid") == out.key_id:
                continue
            body = open_report(settings, audit_id, row.body)
            session.execute(
                update(ReportRow).where(ReportRow.audit_id == audit_id).values(body=seal_report(settings, audit_id, body))
            )
            session.commit()
            out.reports += 1
    return out
