"""The limit error and the one-line message helpers every teacher-file check shares.

A teacher file is user input, so every refusal is one short line (never a traceback, never a
dump of the file's keys); these helpers are the single place that shortens text that way.
"""

from __future__ import annotations

from typing import Any

from kdaudit.core.errors import CheckpointError

#: how many keys/tensors a message names before it says "(+N more)"
FEW = 3


class CheckpointLimitError(CheckpointError):
    """A file over one of the configured limits. `limit` names the setting (e.g. 'max_parameters')."""

    def __init__(self, message: str, limit: str, limit_value: int, requested: int | None = None) -> None:
        super().__init__(message)
        self.limit, self.limit_value, self.requested = limit, int(limit_value), requested

    def as_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "limit_value": self.limit_value, "requested": self.requested}


def one_line(msg: object, limit: int = 300) -> str:
    """`msg` on one line, cut to `limit` characters (library errors can span pages)."""
    text = " ".join(str(msg).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def few(items: list[str], n: int = FEW) -> str:
    """The first `n` items, and how many more there are."""
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")
