"""Writes that wait for their transaction's commit, to go together in as few trips as possible.

A group commit (``Store.batched``) runs the work of many messages in one transaction, one work
after another, while every client in the batch waits for its 250. Each statement a work runs is
a round trip to the database: for SQLite, to aiosqlite's thread and back through the event loop,
which under load waits behind everything else the loop has to do (profiled at 100 KiB messages:
0.5-8 ms a trip, 15 trips a batch, and the batch was what limited throughput). So:

* :func:`insert_at_commit`: append-only rows nobody reads back in the same transaction (new
  messages, their bytes) are inserted at the commit, one statement a table;
* :func:`chain_at_commit`: rows of a hash chain (the audit trail) are linked at the commit too,
  after every other write and after the chain's last row is read there: the chain is locked
  only from then to the commit;
* :func:`update_at_commit`: in a group commit, an UPDATE that must change exactly one row (a
  delivery outcome, which holds only while its sender still has the lease) is taken to succeed
  and runs at the commit. If it changes no row there, :class:`LostUpdateError` fails the batch,
  and ``Store.batched`` runs each work again alone, where the update runs at once and its work
  sees the truth: the batch only ever commits what running the works one by one would.

On SQLite everything waiting goes to the database thread in ONE trip (:func:`_flush_sqlite`),
where each table's rows go in one statement and consecutive updates of one kind in one
UPDATE ... FROM (VALUES ...) (:func:`_run_plan`).
A group commit there goes further (:func:`one_trip`): its works run before any transaction is
open, and BEGIN, the writes and COMMIT all happen in that one trip, so SQLite's single write
lock is held only while the database thread works, never while the event loop gets round to
the next statement. With several relay processes on one file that lock was the bottleneck:
held ~4 ms a batch, it was held nearly all the time (profiled, 2 processes, 1 KiB messages).

On PostgreSQL what waits goes through asyncpg's own calls (:func:`_flush_asyncpg`): one trip
a statement however many rows it writes, the updates of a batch included. Under load a group
commit held about nine accepts and nine deliveries: that took it from sixteen trips to eight,
and one relay process from ~600 to ~760 messages/s (1 KiB, paired runs).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Select, Table, insert, literal_column, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Update

from relayguard.errors import StoreError
from relayguard.store import pgcopy

# conn.info key (the DBAPI connection's, kept across checkouts: hence the transaction check).
_DEFERRED = "relayguard.deferred"
_NO_TX = object()  # the transaction of a one-trip group commit, not yet begun


class LostUpdateError(StoreError):
    """An update deferred to the commit of a group changed no row (its lease was lost)."""

    def __init__(self) -> None:
        super().__init__("a deferred update changed no row")


class NeedsTransactionError(StoreError):
    """A work in a one-trip group commit ran a statement of its own: that needs a transaction
    open while the works run, so the batch is run again in an ordinary one."""

    def __init__(self) -> None:
        super().__init__("a statement ran before a one-trip commit")


@dataclass(frozen=True, eq=False)
class Chain:
    """An append-only hash chain whose new rows are linked at the commit (relayguard.audit).

    ``tail`` selects the last row's ``(seq, hash)``; ``link(last, rows)`` fills in each new
    row's seq, prev_hash and hash, in order, from that tail (None for an empty chain).
    ``lock_sql`` (by dialect name) runs first, where the write lock alone does not serialise
    appenders (PostgreSQL's advisory lock)."""

    table: Table
    tail: Select[Any]
    link: Callable[[Any, list[dict[str, Any]]], None]
    lock_sql: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class TripLock(Protocol):
    """What a one-trip commit needs of the backend's writer lock (sqlite.WriterLock)."""

    @property
    def local(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Orders this process's writers; taken on the event loop."""

    def held(self) -> contextlib.AbstractContextManager[None]:
        """Other processes' writers; taken and let go in the database thread."""


@dataclass
class _Waiting:
    tx: object
    batch: bool = False
    spoiled: bool = False  # a one-trip commit's work tried to begin a transaction
    inserts: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    chains: list[Chain] = field(default_factory=list)
    updates: list[tuple[Update, dict[str, Any]]] = field(default_factory=list)


def tx_of(conn: AsyncConnection) -> object:
    return conn.sync_connection.get_transaction() if conn.sync_connection else None


def manage(conn: AsyncConnection, *, batch: bool = False) -> None:
    """Mark the transaction open on ``conn`` as Store.begin()'s (writes may wait for its
    commit) and, with ``batch``, as a group commit's (updates may wait too)."""
    tx = tx_of(conn)
    waiting: _Waiting | None = conn.info.get(_DEFERRED)
    if waiting is None or waiting.tx is not tx:
        waiting = conn.info[_DEFERRED] = _Waiting(tx)
    waiting.batch = waiting.batch or batch


def _waiting(conn: AsyncConnection, *, batch: bool = False) -> _Waiting | None:
    waiting: _Waiting | None = conn.info.get(_DEFERRED)
    if waiting is None or (batch and not waiting.batch):
        return None
    if waiting.tx is _NO_TX:
        return waiting
    return waiting if waiting.tx is tx_of(conn) else None


def check_begin(conn: Any) -> None:
    """Called as a transaction begins on ``conn`` (either API's connection; the SQLite backend's
    begin hook): refused while the works of a one-trip group commit run, and that commit with
    it, even if the work goes on after the error."""
    waiting: _Waiting | None = conn.info.get(_DEFERRED)
    if waiting is not None and waiting.tx is _NO_TX:
        waiting.spoiled = True
        raise NeedsTransactionError


async def insert_at_commit(conn: AsyncConnection, table: Table, row: dict[str, Any]) -> None:
    """Insert ``row`` when the transaction commits, with every other row queued for ``table``.
    Outside a transaction opened by ``Store.begin`` it inserts at once."""
    waiting = _waiting(conn)
    if waiting is None:
        await conn.execute(insert(table).values(**row))
        return
    waiting.inserts.setdefault(table, []).append(row)


async def chain_at_commit(conn: AsyncConnection, chain: Chain, row: dict[str, Any]) -> None:
    """Queue ``row`` for ``chain``, to be linked and inserted at the commit. Outside a
    transaction opened by ``Store.begin`` it is linked and inserted at once."""
    waiting = _waiting(conn)
    if waiting is None:
        await _link(conn, chain, [row])
        await conn.execute(insert(chain.table).values(**row))
        return
    if chain not in waiting.chains:
        waiting.chains.append(chain)
    waiting.inserts.setdefault(chain.table, []).append(row)


async def _link(conn: AsyncConnection, chain: Chain, rows: list[dict[str, Any]]) -> None:
    """Link ``rows`` after the chain's last row, read through ``conn`` (SQLAlchemy's way; the
    SQLite trips read it in the database thread, _run_plan)."""
    if sql := chain.lock_sql.get(conn.dialect.name):
        await conn.execute(text(sql))
    chain.link((await conn.execute(chain.tail)).first(), rows)


async def update_at_commit(conn: AsyncConnection, stmt: Update, params: dict[str, Any]) -> bool:
    """Run ``stmt``, an UPDATE of at most one row; True if it changed its row. In a group commit
    it runs at the commit and True is assumed (see the module's docstring for why that is safe)."""
    waiting = _waiting(conn, batch=True)
    if waiting is None:
        return bool((await conn.execute(stmt, params)).rowcount)
    waiting.updates.append((stmt, params))
    return True


async def flush(conn: AsyncConnection) -> None:
    """Run what waits for this transaction's commit: called by Store.begin() right before it."""
    waiting = _waiting(conn)
    conn.info.pop(_DEFERRED, None)
    if waiting is None:
        return
    if conn.dialect.name == "sqlite" and await _flush_sqlite(conn, waiting, None):
        return
    if conn.dialect.driver == "asyncpg" and await _flush_asyncpg(conn, waiting):
        return
    # The chains last: on PostgreSQL their lock serialises every instance's commits, so it is
    # taken only after everything else is written and held for the tail, the chain's rows and
    # the COMMIT (taken first, it was held over every other statement too; two processes'
    # batches then queued behind each other).
    chained = {chain.table for chain in waiting.chains}
    for table, rows in waiting.inserts.items():
        if table not in chained:
            await conn.execute(insert(table), rows)
    for stmt, params in waiting.updates:
        if (await conn.execute(stmt, params)).rowcount != 1:
            raise LostUpdateError
    for chain in waiting.chains:
        await _link(conn, chain, waiting.inserts[chain.table])
        await conn.execute(insert(chain.table), waiting.inserts[chain.table])


@contextlib.contextmanager
def one_trip(conn: AsyncConnection) -> Iterator[None]:
    """Run the works of a group commit on ``conn`` with no transaction open: what they write
    waits, and :func:`commit_in_one_trip` runs it all. A work that runs a statement of its own
    meets :class:`NeedsTransactionError` (the SQLite backend's begin hook raises it)."""
    conn.info[_DEFERRED] = _Waiting(_NO_TX, batch=True)
    try:
        yield
    finally:
        conn.info.pop(_DEFERRED, None)


async def commit_in_one_trip(conn: AsyncConnection, lock: TripLock) -> None:
    """BEGIN, everything the works of :func:`one_trip` left waiting, and COMMIT, in one trip to
    aiosqlite's thread, which takes the other processes' writer lock for just that long."""
    waiting = _waiting(conn)
    if waiting is None or waiting.tx is not _NO_TX:
        raise RuntimeError("commit_in_one_trip() outside one_trip()")
    if waiting.spoiled:
        raise NeedsTransactionError
    async with lock.local:
        if not await _flush_sqlite(conn, waiting, lock):
            raise NeedsTransactionError


# -- SQLite: one trip to the database thread ------------------------------------------------

_Step = tuple[str, tuple[str, ...], list[dict[str, Any]], bool]  # SQL, names, rows, one row each
_Plan = list[_Step]


def _values(names: tuple[str, ...], rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """A step's rows as the drivers take them: their values in the statement's order."""
    return [tuple(row[n] for n in names) for row in rows]


async def _flush_sqlite(conn: AsyncConnection, waiting: _Waiting, lock: TripLock | None) -> bool:
    """Everything waiting, run by sqlite3 in aiosqlite's thread in one trip; False (nothing
    done) when a statement cannot be run that way, and the caller runs it statement by statement.
    With ``lock`` the trip also opens and commits the transaction, holding ``lock.held()``.

    The statements are compiled by SQLAlchemy for this dialect, and the parameters are passed
    as they are: the columns are text, numbers and bytes, which sqlite3 takes as such (the
    SQLite dialect has no bind processors for them). sqlite3's errors reach Store.begin(),
    which reports them as it does SQLAlchemy's."""
    driver = (await conn.get_raw_connection()).driver_connection
    run = getattr(driver, "_execute", None)  # aiosqlite: run a function in its thread
    db = getattr(driver, "_conn", None)
    plan = _plan(conn.dialect, waiting)
    if run is None or db is None or plan is None:
        return False
    tails = [(_compiled_tail(conn.dialect, chain), chain, waiting.inserts[chain.table])
             for chain in waiting.chains]
    if lock is None:
        await run(_run_plan, db, tails, plan)
    else:
        await run(_run_transaction, db, lock, tails, plan)
    return True


def _plan(dialect: Dialect, waiting: _Waiting) -> _Plan | None:
    """The statements for everything waiting; None if one cannot be run as compiled here."""
    inserts = _insert_steps(dialect, waiting)
    updates = _update_steps(dialect, waiting)
    return None if inserts is None or updates is None else [*inserts.values(), *updates]


def _insert_steps(dialect: Dialect, waiting: _Waiting) -> dict[Table, _Step] | None:
    steps = {}
    for table, rows in waiting.inserts.items():
        compiled = _compiled_insert(dialect, table, frozenset(rows[0]))
        if compiled is None or any(row.keys() != rows[0].keys() for row in rows):
            return None  # a column SQLAlchemy would fill, or rows unlike the first: left to it
        steps[table] = (*compiled, rows, False)
    return steps


def _update_steps(dialect: Dialect, waiting: _Waiting, *, returning: bool = False) -> _Plan | None:
    """Consecutive updates by one statement make one step. With ``returning``, each returns a
    row for each row it changes."""
    steps: _Plan = []
    for stmt, params in waiting.updates:
        sql, names, fixed = _compiled_update(dialect, _returning_a_row(stmt) if returning else stmt)
        if not set(names) <= params.keys() | fixed.keys():
            return None
        if steps and steps[-1][0] == sql:
            steps[-1][2].append({**fixed, **params})
        else:
            steps.append((sql, names, [{**fixed, **params}], True))
    return steps


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


@lru_cache(maxsize=64)
def _returning_a_row(stmt: Update) -> Update:
    return stmt.returning(literal_column("1"))


@lru_cache(maxsize=8)
def _compiled_tail(dialect: Dialect, chain: Chain) -> str:
    return str(chain.tail.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


_Tails = list[tuple[str, Chain, list[dict[str, Any]]]]


def _run_transaction(db: sqlite3.Connection, lock: TripLock, tails: _Tails, plan: _Plan) -> None:
    """In aiosqlite's thread: the whole transaction of a one-trip group commit."""
    with lock.held():
        db.execute("BEGIN IMMEDIATE")
        try:
            _run_plan(db, tails, plan)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _run_plan(db: sqlite3.Connection, tails: _Tails, plan: _Plan) -> None:
    """In aiosqlite's thread, inside a transaction: link the chains, then run the plan, each
    step in as few statements as SQLite takes (see :func:`_rows_at_once`)."""
    cursor = db.cursor()
    per_statement = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    try:
        for tail_sql, chain, rows in tails:
            chain.link(cursor.execute(tail_sql).fetchone(), rows)
        for sql, names, rows, one_row_each in plan:
            values = _values(names, rows)
            at_once = _rows_at_once(sql, len(names), per_statement, update=one_row_each)
            for chunk in _chunks(values, at_once):
                if len(chunk) == 1:
                    changed = cursor.execute(sql, chunk[0]).rowcount
                else:
                    many = _many_rows_sql(sql, len(names), len(chunk), update=one_row_each)
                    changed = cursor.execute(many, [v for row in chunk for v in row]).rowcount
                if one_row_each and changed != len(chunk):
                    raise LostUpdateError
    finally:
        cursor.close()


# sqlite3 lets go of the GIL for every statement it steps, executemany's rows included, and
# under load the database thread then waits for the event loop's thread to give it back:
# profiled (1 KiB messages, one process) at ~150-250 us a row, a group commit of ~30 rows held
# in the database thread for ~6 ms, most of it waiting. So the rows of a step go in one
# statement: an INSERT with one VALUES row each, an UPDATE ... FROM (VALUES ...) joining them.
_UPDATE_FROM_VERSION = (3, 33, 0)  # SQLite's first with UPDATE ... FROM
_MAX_ROWS_AT_ONCE = 500
# SQLite copies every blob and text it is bound (sqlite3 binds them SQLITE_TRANSIENT): rows
# going in together are all copied at once, so large ones (message bodies) go one by one,
# as executemany's did, and the copies stay one message's size.
_MAX_BYTES_AT_ONCE = 1 << 20


def _chunks(values: list[tuple[Any, ...]], at_once: int) -> Iterator[list[tuple[Any, ...]]]:
    """``values`` in runs of at most ``at_once`` rows and _MAX_BYTES_AT_ONCE bound bytes (a
    larger row alone)."""
    chunk: list[tuple[Any, ...]] = []
    size = 0
    for row in values:
        row_size = sum(len(v) for v in row if isinstance(v, (bytes, str)))
        if chunk and (len(chunk) == at_once or size + row_size > _MAX_BYTES_AT_ONCE):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


@lru_cache(maxsize=64)
def _rows_at_once(sql: str, width: int, per_statement: int, *, update: bool) -> int:
    """How many rows one statement of ``sql``'s step may carry (1: a statement a row); looked
    at once a statement, not once a trip."""
    if update and (sqlite3.sqlite_version_info < _UPDATE_FROM_VERSION
                   or _update_parts(sql, width) is None):
        return 1
    if not update and not sql.endswith(" VALUES " + _values_row(width)):
        return 1
    return max(1, min(_MAX_ROWS_AT_ONCE, per_statement // max(width, 1)))


def _update_parts(sql: str, width: int) -> tuple[str, str] | None:
    """An UPDATE's SET and WHERE parts, each ``?`` (the k-th parameter) made column k of the
    VALUES rows; None when the SQL is not one a parameter per ``?`` with a single WHERE."""
    if sql.count("?") != width or sql.count(" WHERE ") != 1 or " FROM " in sql:
        return None
    numbers = iter(range(1, width + 1))
    named = re.sub(r"\?", lambda _: f"_rows.column{next(numbers)}", sql)
    head, where = named.split(" WHERE ")
    return head, where


def _values_row(width: int) -> str:
    return "(" + ", ".join(["?"] * width) + ")"


@lru_cache(maxsize=256)
def _many_rows_sql(sql: str, width: int, count: int, *, update: bool) -> str:
    """``sql`` (one row's INSERT or UPDATE, qmark parameters) for ``count`` rows at once; an
    UPDATE changes one row for each of them unless two name the same row."""
    rows = ", ".join([_values_row(width)] * count)
    if not update:
        head, _, _ = sql.rpartition(" VALUES ")
        return f"{head} VALUES {rows}"
    parts = _update_parts(sql, width)
    assert parts is not None  # _rows_at_once() said so
    head, where = parts
    return f"{head} FROM (VALUES {rows}) AS _rows WHERE {where}"


# -- PostgreSQL: asyncpg's own calls, one trip a statement ---------------------------------------

async def _flush_asyncpg(conn: AsyncConnection, waiting: _Waiting) -> bool:
    """Everything waiting, through asyncpg's own calls; False (nothing done) when a statement
    cannot be run that way, and the caller runs it through SQLAlchemy.

    Each statement is one trip whatever the batch's size: the updates of a group commit go in
    one ``fetchmany`` whose RETURNING rows are counted. Through SQLAlchemy each update was a
    trip of its own (it cannot count the rows an executemany changes): nine of a typical
    batch's sixteen trips. asyncpg's calls also skip SQLAlchemy's per-statement and per-row
    work on the event loop. As on SQLite, the parameters go as they are: no column the store
    writes has a bind processor in this dialect. Rows with a large value go by COPY (pgcopy)."""
    driver = (await conn.get_raw_connection()).driver_connection
    dialect = conn.dialect
    updates = _update_steps(dialect, waiting, returning=True)
    inserts = _insert_steps(dialect, waiting)
    if driver is None or updates is None or inserts is None:
        return False
    chained = {chain.table for chain in waiting.chains}
    # asyncpg's errors reach Store.begin(), which reports them as it does SQLAlchemy's.
    async with _transaction(driver):
        for table, step in inserts.items():
            if table not in chained:
                await _insert_asyncpg(driver, dialect, table, step)
        for sql, names, rows, _ in updates:
            values = _values(names, rows)
            if len(await driver.fetchmany(sql, values)) != len(values):
                raise LostUpdateError  # each changes at most one row: one changed none
        # The chains last, as in flush(): their lock is held from here to the commit.
        for chain in waiting.chains:
            if lock := chain.lock_sql.get(dialect.name):
                await driver.execute(lock)
            chain.link(await driver.fetchrow(_compiled_tail(dialect, chain)),
                       waiting.inserts[chain.table])
            await _insert_asyncpg(driver, dialect, chain.table, inserts[chain.table])
    return True


async def _insert_asyncpg(driver: Any, dialect: Dialect, table: Table, step: _Step) -> None:
    sql, names, rows, _ = step
    large = [row for row in rows if pgcopy.is_large(row)]
    encode = pgcopy.encoders(dialect, table, names) if large else None
    small = rows if encode is None else [row for row in rows if not pgcopy.is_large(row)]
    if small:
        await driver.executemany(sql, _values(names, small))
    if encode is not None:
        await pgcopy.copy_rows(driver, table, names, encode, large)


@contextlib.asynccontextmanager
async def _transaction(driver: Any) -> AsyncIterator[None]:
    """The transaction the statements run in. If SQLAlchemy began one (a work ran a statement
    of its own), it is that one, which Store.begin() commits. If not, asyncpg begins one and
    commits it here, and SQLAlchemy, which never sent a BEGIN, has nothing left to commit."""
    if driver.is_in_transaction():
        yield
        return
    async with driver.transaction():
        yield

