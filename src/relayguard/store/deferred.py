"""Writes that wait for their transaction's commit, to go together in as few trips as possible.

A group commit (``Store.batched``) runs the work of many messages in one transaction, one work
after another, while every client in the batch waits for its 250. Each statement a work runs is
a round trip to the database: for SQLite, to aiosqlite's thread and back through the event loop,
which under load waits behind everything else the loop has to do (profiled at 100 KiB messages:
0.5-8 ms a trip, 15 trips a batch, and the batch was what limited throughput). So:

* :func:`insert_at_commit`: append-only rows nobody reads back in the same transaction (new
  messages, their bytes, audit entries) are inserted at the commit, one ``executemany`` a table;
* :func:`update_at_commit`: in a group commit, an UPDATE that must change exactly one row (a
  delivery outcome, which holds only while its sender still has the lease) is taken to succeed
  and runs at the commit. If it changes no row there, :class:`LostUpdateError` fails the batch,
  and ``Store.batched`` runs each work again alone, where the update runs at once and its work
  sees the truth: the batch only ever commits what running the works one by one would.

On SQLite everything waiting goes to the database thread in ONE trip (:func:`_flush_sqlite`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Update

from relayguard.errors import StoreError

# conn.info keys: the transaction Store.begin() opened, the one a group commit runs in, and what
# waits for its commit.
_MANAGED = "relayguard.managed_tx"
_BATCHED = "relayguard.batched_tx"
_DEFERRED = "relayguard.deferred"


class LostUpdateError(StoreError):
    """An update deferred to the commit of a group changed no row (its lease was lost)."""

    def __init__(self) -> None:
        super().__init__("a deferred update changed no row")


@dataclass
class _Waiting:
    tx: object
    inserts: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    updates: list[tuple[Update, dict[str, Any]]] = field(default_factory=list)


def tx_of(conn: AsyncConnection) -> object:
    return conn.sync_connection.get_transaction() if conn.sync_connection else None


def manage(conn: AsyncConnection, *, batch: bool = False) -> None:
    """Mark the transaction open on ``conn`` as Store.begin()'s (writes may wait for its
    commit) and, with ``batch``, as a group commit's (updates may wait too)."""
    tx = tx_of(conn)
    conn.info[_BATCHED if batch else _MANAGED] = tx


def _waiting(conn: AsyncConnection, key: str) -> _Waiting | None:
    tx = tx_of(conn)
    if tx is None or conn.info.get(key) is not tx:
        return None
    waiting: _Waiting | None = conn.info.get(_DEFERRED)
    if waiting is None or waiting.tx is not tx:
        waiting = conn.info[_DEFERRED] = _Waiting(tx)
    return waiting


async def insert_at_commit(conn: AsyncConnection, table: Table, row: dict[str, Any]) -> None:
    """Insert ``row`` when the transaction commits, with every other row queued for ``table``.
    Outside a transaction opened by ``Store.begin`` it inserts at once."""
    waiting = _waiting(conn, _MANAGED)
    if waiting is None:
        await conn.execute(insert(table).values(**row))
        return
    waiting.inserts.setdefault(table, []).append(row)


async def update_at_commit(conn: AsyncConnection, stmt: Update, params: dict[str, Any]) -> bool:
    """Run ``stmt``, an UPDATE of at most one row; True if it changed its row. In a group commit
    it runs at the commit and True is assumed (see the module's docstring for why that is safe)."""
    waiting = _waiting(conn, _BATCHED)
    if waiting is None:
        return bool((await conn.execute(stmt, params)).rowcount)
    waiting.updates.append((stmt, params))
    return True


async def flush(conn: AsyncConnection) -> None:
    """Run what waits for this transaction's commit: called by Store.begin() right before it."""
    waiting: _Waiting | None = conn.info.pop(_DEFERRED, None)
    if waiting is None or waiting.tx is not tx_of(conn):
        return
    if conn.dialect.name == "sqlite" and await _flush_sqlite(conn, waiting):
        return
    for table, rows in waiting.inserts.items():
        await conn.execute(insert(table), rows)
    for stmt, params in waiting.updates:
        if (await conn.execute(stmt, params)).rowcount != 1:
            raise LostUpdateError


# -- SQLite: one trip to the database thread ------------------------------------------------

_Group = tuple[str, list[tuple[Any, ...]], bool]  # SQL, parameter rows, each must change one row


async def _flush_sqlite(conn: AsyncConnection, waiting: _Waiting) -> bool:
    """Everything waiting, run by sqlite3 in aiosqlite's thread in one trip; False (nothing
    done) when a statement cannot be run that way, and the caller runs it statement by statement.

    The statements are compiled by SQLAlchemy for this dialect, and the parameters are passed
    as they are: the columns are text, numbers and bytes, which sqlite3 takes as such (the
    SQLite dialect has no bind processors for them). sqlite3's errors reach Store.begin(),
    which reports them as it does SQLAlchemy's."""
    driver = (await conn.get_raw_connection()).driver_connection
    run = getattr(driver, "_execute", None)  # aiosqlite: run a function in its thread
    db = getattr(driver, "_conn", None)
    groups = _groups(conn.dialect, waiting)
    if run is None or db is None or groups is None:
        return False
    await run(_run_groups, db, groups)
    return True


def _groups(dialect: Dialect, waiting: _Waiting) -> list[_Group] | None:
    groups: list[_Group] = []
    for table, rows in waiting.inserts.items():
        compiled = _compiled_insert(dialect, table, frozenset(rows[0]))
        if compiled is None:
            return None
        sql, names = compiled
        try:
            groups.append((sql, [tuple(row[n] for n in names) for row in rows], False))
        except KeyError:  # rows with other columns than the first: left to SQLAlchemy
            return None
    for stmt, params in waiting.updates:
        sql, names, fixed = _compiled_update(dialect, stmt)
        try:
            groups.append((sql, [tuple(params[n] if n in params else fixed[n] for n in names)], True))
        except KeyError:
            return None
    return groups


@lru_cache(maxsize=64)
def _compiled_insert(dialect: Dialect, table: Table,
                     keys: frozenset[str]) -> tuple[str, tuple[str, ...]] | None:
    """INSERT SQL for the columns ``keys`` and the order it takes them in; None if SQLAlchemy
    would add a column (one with a default the rows leave out)."""
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ())
    if set(names) != keys or compiled.insert_prefetch:
        return None
    return str(compiled), names


@lru_cache(maxsize=64)
def _compiled_update(dialect: Dialect, stmt: Update) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """UPDATE SQL, its parameters' names in order, and the values of those fixed in ``stmt``."""
    compiled = stmt.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ())
    fixed = {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required}
    return str(compiled), names, fixed


def _run_groups(db: sqlite3.Connection, groups: list[_Group]) -> None:
    """In aiosqlite's thread, inside the transaction Store.begin() opened."""
    cursor = db.cursor()
    try:
        for sql, rows, one_row_each in groups:
            if not one_row_each:
                cursor.executemany(sql, rows)
                continue
            for params in rows:
                if cursor.execute(sql, params).rowcount != 1:
                    raise LostUpdateError
    finally:
        cursor.close()
