"""Size limits checked before any byte of a teacher file is parsed: the upload size, and zip
archives that would expand past what a state_dict within the parameter limit can need.

`state_dict_byte_budget` is also the loader child's RLIMIT_FSIZE (see `rlimits`): both ask
the same question, "how many bytes can the allowed weights take?", so they share one answer.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from kdaudit.core.errors import CheckpointError
from kdaudit.core.settings import Settings, get_settings
from kdaudit.models.checkpoints.errors import CheckpointLimitError, one_line

#: torch.save writes stored (uncompressed) entries; a compressed entry that expands more than
#: this is refused as a zip bomb before anything decompresses it
MAX_ZIP_RATIO = 50
#: room on top of the weights themselves (pickles, headers, alignment)
STATE_DICT_SLACK_BYTES = 64 * 1024 * 1024


def state_dict_byte_budget(max_parameters: int) -> int:
    """Bytes a state_dict within the parameter limit can take: one float64 copy plus slack."""
    return max_parameters * 8 + STATE_DICT_SLACK_BYTES


def check_upload_bytes(size: int, settings: Settings, what: str = "file") -> None:
    """Refuse `size` bytes over `Settings.max_upload_bytes`, naming the limit."""
    if size > settings.max_upload_bytes:
        raise CheckpointLimitError(
            f"{what} is {size:,} bytes, over the upload limit of {settings.max_upload_bytes:,} bytes",
            "max_upload_bytes",
            settings.max_upload_bytes,
            size,
        )


def check_size(path: Path, settings: Settings) -> int:
    """The size of a regular, non-empty file within the upload limit (stat only, nothing read)."""
    try:
        st = path.stat()
    except OSError as e:
        raise CheckpointError(f"cannot read {path.name}: {e.strerror or e}") from None
    if not path.is_file():
        raise CheckpointError(f"{path.name} is not a regular file")
    if st.st_size == 0:
        raise CheckpointError("file is empty")
    check_upload_bytes(st.st_size, settings)
    return st.st_size


def check_zip_bomb(infos: list[zipfile.ZipInfo], settings: Settings | None) -> None:
    """Refuse archives that expand far beyond what a state_dict needs, from the central directory
    alone (nothing is decompressed): torch.save stores entries uncompressed."""
    settings = settings or get_settings()
    total = sum(max(i.file_size, 0) for i in infos)
    packed = sum(max(i.compress_size, 0) for i in infos)
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED and i.file_size > 1024 * 1024:
            ratio = i.file_size / max(i.compress_size, 1)
            if ratio > MAX_ZIP_RATIO:
                raise CheckpointError(
                    f"zip archive entry {one_line(i.filename, 60)!r} expands {ratio:,.0f}:1 "
                    f"({i.compress_size:,} -> {i.file_size:,} bytes): refusing a zip bomb"
                )
    if total > state_dict_byte_budget(settings.max_parameters):
        raise CheckpointLimitError(
            f"zip archive expands to {total:,} bytes (from {packed:,}), more than a state_dict within the "
            f"parameter limit of {settings.max_parameters:,} values can need: refusing a zip bomb",
            "max_parameters",
            settings.max_parameters,
        )
