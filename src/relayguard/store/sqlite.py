"""SQLite backend: one file, WAL, ``synchronous=FULL`` and ``BEGIN IMMEDIATE`` transactions.

IMMEDIATE takes the write lock at BEGIN, so two processes (the relay and a CLI) never both read
and then deadlock upgrading to a write; ``busy_timeout`` makes the loser wait instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_SYNC_LEVELS = {"OFF", "NORMAL", "FULL", "EXTRA"}


def create_engine(url: str, *, synchronous: str = "FULL") -> AsyncEngine:
    parsed = make_url(url).set(drivername="sqlite+aiosqlite")
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    level = synchronous.upper()
    if level not in _SYNC_LEVELS:
        raise ValueError(f"store.synchronous must be one of {sorted(_SYNC_LEVELS)}")
    engine = create_async_engine(parsed, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Hand transaction control to us (the "begin" hook below), as SQLAlchemy's docs advise.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={level}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
