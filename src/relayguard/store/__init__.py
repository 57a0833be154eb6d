"""Persistence: ``open_store(url)`` picks the backend from the URL scheme.

``sqlite:///var/relayguard.db`` (embedded default) or ``postgresql://user@host/db[?schema=x]``.
"""

from __future__ import annotations

from relayguard.clock import Clock
from relayguard.store.base import Store, new_queue_id
from relayguard.store.records import StoredMessage, User
from relayguard.store.states import OPEN_STATES, State

__all__ = ["OPEN_STATES", "State", "Store", "StoredMessage", "User", "new_queue_id", "open_store"]


def open_store(url: str, *, clock: Clock | None = None, synchronous: str = "FULL") -> Store:
    """A :class:`Store` for ``url``; call ``await store.migrate()`` before first use."""
    if url.startswith("sqlite"):
        from relayguard.store import sqlite  # noqa: PLC0415 - each backend loads only its driver

        return Store(sqlite.create_engine(url, synchronous=synchronous), clock=clock, url=url,
                     write_lock=sqlite.WriterLock(sqlite.database_path(url)))
    if url.startswith(("postgresql", "postgres:")):
        try:
            from relayguard.store import postgres  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - asyncpg is a hard dependency today
            raise RuntimeError("the PostgreSQL backend needs asyncpg: pip install asyncpg") from exc
        url = url.replace("postgres://", "postgresql://", 1)
        return Store(postgres.create_engine(url), clock=clock, schema=postgres.schema_of(url), url=url)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://…")
