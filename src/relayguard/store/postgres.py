"""PostgreSQL backend (asyncpg): several relay instances share one database.

Queue rows are claimed with ``FOR UPDATE SKIP LOCKED`` (see ``Store.claim``), so two instances
never claim the same message while its lease runs. A ``schema`` query parameter puts every table
in that schema (tests use a private one and drop it afterwards).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

APPLICATION_NAME = "relayguard"  # what pg_stat_activity shows for the relay's connections


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url).set(drivername="postgresql+asyncpg")
    schema = parsed.query.get("schema")
    parsed = parsed.difference_update_query(["schema"])
    settings = {"application_name": APPLICATION_NAME}
    if isinstance(schema, str) and schema:
        settings["search_path"] = schema
    engine = create_async_engine(parsed, connect_args={"server_settings": settings},
                                 pool_size=10, max_overflow=10)
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


def _refuse_closed(dbapi_conn: Any, record: Any, proxy: Any) -> None:
    """Hand out no pooled connection the server has closed (a restart, or an admin's
    ``pg_terminate_backend``): the pool then opens a new one.

    In place of SQLAlchemy's ``pool_pre_ping``, which for asyncpg costs three round trips on
    every checkout (BEGIN, an empty query, ROLLBACK): two of every batch's eight trips, and
    half the server's transactions. asyncpg notices the server's close as soon as the event
    loop reads it, so asking costs nothing. A connection whose peer vanished without closing
    it is not caught here, but a ping would only have waited on it too."""
    if dbapi_conn.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def schema_of(url: str) -> str | None:
    value = make_url(url).query.get("schema")
    return value if isinstance(value, str) and value else None
