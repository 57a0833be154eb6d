"""PostgreSQL: rows holding a large value (a message's bytes) go in by binary COPY, in slices.

asyncpg sends a bind parameter whole. For a 25 MiB message it built the insert in a buffer that
grows by copying, joined that for the socket, and asyncio kept what the socket had not yet taken
in a copy of its own: inserting the body cost the relay ~115 MiB (tracemalloc), more than four
times the message, and more than anything else the relay does with it. COPY takes the same row
as a stream: we hand asyncpg the value a slice at a time (views of the bytes, not copies), and it
waits for the socket to drain between slices, so about one slice is in flight at once.

COPY's binary format wants each field in the column's own binary form, so only the column types
the store uses are encoded here; a table with any other type is left to ``executemany``.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect

COPY_MIN_BYTES = 1 << 20  # a row with a bytes value this long goes by COPY
_SLICE = 256 * 1024
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # no flags, no header extension
_NULL = struct.pack("!i", -1)
_END = struct.pack("!h", -1)

_Encode = Callable[[Any], bytes]


def _text(value: Any) -> bytes:
    return str(value).encode("utf-8")  # asyncpg's connections use client_encoding UTF8


def _bytes(value: Any) -> bytes:
    return bytes(value) if not isinstance(value, bytes) else value


# By the type's name in PostgreSQL's DDL, as SQLAlchemy renders it (FLOAT is double precision).
_ENCODERS: dict[str, _Encode] = {
    "VARCHAR": _text, "TEXT": _text, "BYTEA": _bytes,
    "FLOAT": struct.Struct("!d").pack, "DOUBLE PRECISION": struct.Struct("!d").pack,
    "INTEGER": struct.Struct("!i").pack, "BIGINT": struct.Struct("!q").pack,
}


def encoders(dialect: Dialect, table: Table, names: Sequence[str]) -> list[_Encode] | None:
    """How to encode each of ``names``, or None if a column has a type not encoded here."""
    found = []
    for name in names:
        rendered = table.c[name].type.compile(dialect=dialect)
        encode = _ENCODERS.get(rendered.split("(", 1)[0].strip().upper())
        if encode is None:
            return None
        found.append(encode)
    return found


def is_large(row: dict[str, Any]) -> bool:
    return any(isinstance(v, bytes) and len(v) >= COPY_MIN_BYTES for v in row.values())


async def copy_rows(driver: Any, table: Table, names: Sequence[str], encode: list[_Encode],
                    rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` by COPY on the asyncpg connection ``driver``, in its
    transaction (the table is found by the connection's search_path, as the INSERTs find it)."""
    await driver.copy_to_table(table.name, columns=list(names), format="binary",
                               source=_stream(names, encode, rows))


async def _stream(names: Sequence[str], encode: list[_Encode],
                  rows: list[dict[str, Any]]) -> AsyncIterator[bytes | memoryview]:
    yield _SIGNATURE
    for row in rows:
        pending = [struct.pack("!h", len(names))]
        for name, enc in zip(names, encode, strict=True):
            value = row[name]
            if value is None:
                pending.append(_NULL)
                continue
            data = enc(value)
            pending.append(struct.pack("!i", len(data)))
            if len(data) < _SLICE:
                pending.append(data)
                continue
            yield b"".join(pending)
            pending = []
            view = memoryview(data)
            for start in range(0, len(data), _SLICE):
                yield view[start:start + _SLICE]
        yield b"".join(pending)
    yield _END
