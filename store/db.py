"""Engines and sessions, one engine per database URL per process.

SQLite (embedded) is opened in WAL mode with a busy timeout, so the API process and the
worker process can write to the same file; PostgreSQL uses a pre-pinged pool.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_read_engines: dict[str, Engine] = {}


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def get_engine(url: str) -> Engine:
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _make_engine(url)
            _engines[url] = engine
        return engine


def _make_engine(url: str) -> Engine:
    if is_sqlite(url):
        db = make_url(url).database
        if db and db != ":memory:":
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # The API's sync routes run in a 40-thread pool; they hold a connection only for their DB
    # work (see service/routers/base.py `release_db`), so 10 + 20 connections per process is plenty.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10)


def session_factory(url: str) -> sessionmaker[Session]:
    engine = get_engine(url)
    with _lock:
        factory = _factories.get(url)
        if factory is None:
            factory = sessionmaker(engine, expire_on_commit=False)
            _factories[url] = factory
        return factory


def read_engine(url: str) -> Engine:
    """An engine for single-statement reads on the hot path (the status poll), one per URL per process.

    Why a second engine: a pooled ORM session costs a status poll ~0.6 ms of CPU, mostly not the
    query: the pre-ping round trip at checkout, BEGIN, and the ROLLBACK that resets the connection
    on return. One SELECT needs none of them: in AUTOCOMMIT it is its own consistent snapshot, so
    this engine skips the reset and the pre-ping (a dropped connection is retried once by the
    caller: `store.repo.audits.poll_audit`), ~0.15 ms a read. SQLite reads go through the main
    engine (in-process, already cheap; its WAL pragmas live there).
    """
    if is_sqlite(url):
        return get_engine(url)
    with _lock:
        engine = _read_engines.get(url)
        if engine is None:
            # small: a read holds its connection ~1 ms, and the two engines' pools together stay within
            # PostgreSQL's default 100 connections for a few API processes plus workers
            engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                                   pool_size=5, max_overflow=10, pool_timeout=10)  # fmt: skip
            _read_engines[url] = engine
        return engine


def ping(url: str) -> None:
    """Raise if the database cannot answer `SELECT 1`."""
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))


def dispose_all() -> None:
    """Close every pooled connection (tests dropping databases, forked children)."""
    with _lock:
        for engine in (*_engines.values(), *_read_engines.values()):
            engine.dispose()
        _engines.clear()
        _read_engines.clear()
        _factories.clear()
