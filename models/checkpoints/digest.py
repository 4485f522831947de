"""The sha256 of a teacher file: what reports and the store use to name a teacher."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kdaudit.core.errors import CheckpointError


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise CheckpointError(f"cannot read {Path(path).name}: {e.strerror or e}") from None
    return h.hexdigest()
