"""Delete the per-epoch checkpoints of audits that ended without finishing their seeds.

A worker deletes a seed's checkpoint when the seed finishes, so a succeeded audit leaves none;
a failed or cancelled audit left `<data_dir>/checkpoints/<audit id>/` on disk forever (a whole
cohort's weights and optimiser state per seed). The orphan sweep (workers/sweep.py) calls
`sweep_checkpoints`: the folder of an audit that is finished (failed, cancelled, or succeeded
with leftovers) and ended more than `checkpoint_retention_seconds` ago is removed. Retention
keeps them a while for a post-mortem; 0 removes them on the next sweep. Folders of deleted
audits are store/lifecycle.py's job.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from kdaudit.store.db import session_factory
from kdaudit.store.models import FINISHED, Audit, utcnow

log = logging.getLogger("kdaudit.worker")


def sweep_checkpoints(settings) -> list[str]:
    """Remove expired checkpoint folders; returns the audit ids whose folder went."""
    root = Path(settings.data_dir) / "checkpoints"
    if not root.is_dir():
        return []
    ids = [p.name for p in root.iterdir() if p.is_dir()]
    if not ids:
        return []
    cutoff = utcnow() - timedelta(seconds=settings.checkpoint_retention_seconds)
    removed: list[str] = []
    with session_factory(settings.resolved_database_url)() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = session.execute(
                select(Audit.id).where(Audit.id.in_(chunk), Audit.status.in_(FINISHED), Audit.finished_at <= cutoff)
            ).all()
            for (audit_id,) in rows:
                shutil.rmtree(root / audit_id, ignore_errors=True)
                removed.append(audit_id)
    if removed:
        log.info("removed the checkpoints of %d finished audit(s) (checkpoint_retention_seconds)", len(removed))
    return removed
