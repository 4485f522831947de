"""Where the service commands keep their state: --data-dir, --embedded and the migrated settings.

Why one module: `serve`, `worker`, `migrate`, `keys` and `storage` open the same database and
file store, and they must agree on which (the data folder, or KDAUDIT_DATABASE_URL /
KDAUDIT_BROKER_URL in production). The options are turned into environment variables before
the settings are read, so a worker child process started from here sees the same state.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: the settings that take the service out of embedded mode (core/settings.py)
PRODUCTION_VARIABLES = ("KDAUDIT_DATABASE_URL", "KDAUDIT_BROKER_URL")


def data_dir_option() -> argparse.ArgumentParser:
    """An argparse parent with --data-dir."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-dir", help="embedded state folder (env KDAUDIT_DATA_DIR; default ~/.kdaudit)")
    return p


def apply_state_options(args: argparse.Namespace) -> None:
    """Make --data-dir and --embedded the settings of this process (and of its children)."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        os.environ["KDAUDIT_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    if getattr(args, "embedded", False):
        for name in PRODUCTION_VARIABLES:
            os.environ.pop(name, None)
    from kdaudit.core.settings import get_settings
    from kdaudit.store.settings import get_service_settings

    get_settings.cache_clear()
    get_service_settings.cache_clear()


def settings_migrated(args: argparse.Namespace):
    """The service settings for this command, with the database migrated when settings ask for it."""
    from kdaudit.store import migrate
    from kdaudit.store.settings import get_service_settings

    apply_state_options(args)
    settings = get_service_settings()
    if settings.should_auto_migrate:
        migrate.upgrade(settings.resolved_database_url)
    return settings
