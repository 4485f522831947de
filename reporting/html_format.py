"""The report page's small formatting rules, written once for every section."""

from __future__ import annotations

import html
from typing import Any


def escape(value: Any) -> str:
    """Any value as HTML text, quotes escaped too (it may land in an attribute)."""
    return html.escape(str(value), quote=True)


def pct(v: float) -> str:
    return f"{v:.2f}%"


def pts(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f} pts"
