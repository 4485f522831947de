"""Run the Alembic migrations shipped in `kdaudit.migrations` against a database URL."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

import kdaudit.migrations

MIGRATIONS_DIR = Path(kdaudit.migrations.__file__).resolve().parent
_done: set[str] = set()
_lock = threading.Lock()


def alembic_config(url: str) -> Config:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' must be escaped for configparser interpolation (URL-encoded passwords)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """`alembic upgrade head` on `url` (idempotent; cheap once the DB is current)."""
    with _lock:
        if url in _done and revision == "head":
            return
        command.upgrade(alembic_config(url), revision)
        if revision == "head":
            _done.add(url)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from kdaudit.store.db import get_engine

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
