"""PostgreSQL backend (asyncpg): several relay instances share one database.

Queue rows are claimed with ``FOR UPDATE SKIP LOCKED`` (see ``Store.claim``), so two instances
never claim the same message while its lease runs. A ``schema`` query parameter puts every table
in that schema (tests use a private one and drop it afterwards).
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url).set(drivername="postgresql+asyncpg")
    schema = parsed.query.get("schema")
    parsed = parsed.difference_update_query(["schema"])
    connect_args: dict[str, object] = {}
    if isinstance(schema, str) and schema:
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(parsed, connect_args=connect_args, pool_size=10, max_overflow=10,
                               pool_pre_ping=True)


def schema_of(url: str) -> str | None:
    value = make_url(url).query.get("schema")
    return value if isinstance(value, str) and value else None
