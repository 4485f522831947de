"""The migrated database against the ORM models: an empty diff means the migrations and the
models describe the same schema (checked on SQLite and PostgreSQL)."""

from __future__ import annotations

from kdaudit.store.db import get_engine
from kdaudit.store.models import Base


def schema_diff(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)
