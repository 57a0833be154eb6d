"""Binary COPY of rows with a large value (relayguard.store.pgcopy), against the real server."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import BigInteger, Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from relayguard.store import pgcopy
from tests.conftest import PG_URL

pytestmark = pytest.mark.skipif(not PG_URL, reason="RELAYGUARD_TEST_PG_URL not set")

DIALECT = asyncpg_dialect.dialect()
KINDS = Table("copy_kinds", MetaData(), Column("name", String(40)), Column("note", Text),
              Column("at", Float), Column("n", Integer), Column("big", BigInteger),
              Column("raw", LargeBinary))
NAMES = ("name", "note", "at", "n", "big", "raw")


async def test_every_column_type_the_store_uses_round_trips() -> None:
    rows = [
        {"name": "large", "note": "naïve café ✓", "at": 1764050000.123456, "n": -7, "big": 2**40,
         "raw": bytes(range(256)) * 5000},  # 1.28 MB: several slices
        {"name": "nulls", "note": None, "at": None, "n": None, "big": None, "raw": None},
        {"name": "empty", "note": "", "at": 0.0, "n": 0, "big": 0, "raw": b""},
    ]
    encode = pgcopy.encoders(DIALECT, KINDS, NAMES)
    assert encode is not None
    assert PG_URL is not None
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE copy_kinds (name varchar(40), note text, "
                               "at float, n integer, big bigint, raw bytea) ON COMMIT DROP")
            await pgcopy.copy_rows(conn, KINDS, NAMES, encode, rows)
            got = [dict(r) for r in await conn.fetch("SELECT * FROM copy_kinds ORDER BY name DESC")]
    finally:
        await conn.close()
    assert got == [rows[1], rows[0], rows[2]]


def test_a_type_it_cannot_encode_leaves_the_table_to_executemany() -> None:
    flags = Table("flags", MetaData(), Column("on", Boolean), Column("raw", LargeBinary))
    assert pgcopy.encoders(DIALECT, flags, ("on", "raw")) is None
    assert pgcopy.encoders(DIALECT, flags, ("raw",)) is not None
