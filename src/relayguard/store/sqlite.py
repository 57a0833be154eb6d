"""SQLite backend: one file, WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE`` for writes.

IMMEDIATE takes the write lock at BEGIN, so two processes (the relay and a CLI) never both read
and then deadlock upgrading to a write; ``busy_timeout`` makes the loser wait instead of failing.
Reads (``engine.connect()``) begin DEFERRED: WAL gives them a snapshot without the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState
from sqlalchemy.util.concurrency import await_

from relayguard.store import deferred
from relayguard.store.base import WRITES

_SYNC_LEVELS = {"OFF", "NORMAL", "FULL", "EXTRA"}
FILE_LOCK_WAIT_S = 30.0  # as long as SQLite's busy_timeout below
log = structlog.get_logger("relayguard.store")


def database_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None in memory)."""
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


class WriterLock:
    """One writer at a time. Our own writers queue in the event loop, which is far cheaper than
    letting each pooled connection retry BEGIN IMMEDIATE in SQLite's busy handler (it sleeps up
    to 100 ms between tries); writers in other processes on the same file (``smtp.processes``,
    the CLI) queue on an flock() of ``<db>-writer.lock``, which wakes the next one the moment
    the holder lets go. The busy handler stays as the backstop for anything else."""

    def __init__(self, path: Path | None) -> None:
        self._local = asyncio.Lock()
        self._path = path.with_name(path.name + "-writer.lock") if path else None
        self._fd: int | None = None
        self._held = False

    def _file(self) -> int:
        if self._fd is None:
            assert self._path is not None
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            self._held = self._path is not None and await self._lock_file(self._file())
        except BaseException:
            self._local.release()
            raise

    @staticmethod
    async def _lock_file(fd: int) -> bool:
        """Take the file lock; False if another process kept it past ``FILE_LOCK_WAIT_S``.
        Then we go on without it and SQLite's own locking decides (its busy handler waits,
        then the store reports the database as locked): a stuck holder must never hang us."""
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # uncontended: no thread hop
            return True
        waiting = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            async with asyncio.timeout(FILE_LOCK_WAIT_S):  # not wait_for(): it can lose a cancel
                await asyncio.shield(waiting)
        except (asyncio.CancelledError, TimeoutError) as exc:
            # The thread goes on waiting and will get the lock: give it back when it does.
            def give_back(done: asyncio.Future[None]) -> None:
                if done.exception() is None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

            waiting.add_done_callback(give_back)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("store.writer_lock_timeout", waited_s=FILE_LOCK_WAIT_S)
            return False
        return True

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._held and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._held = False
        self._local.release()

    # A one-trip group commit (store.deferred.commit_in_one_trip) takes the two halves apart:
    # ours on the event loop, the file lock in the database thread for just BEGIN..COMMIT.

    @property
    def local(self) -> asyncio.Lock:
        return self._local

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The file lock, taken in the calling (database) thread and let go on leaving. Polled,
        not waited for in flock(): a thread blocked there could not give up after
        ``FILE_LOCK_WAIT_S``. Holders keep it a millisecond or so, so the polls are few."""
        held = self._path is not None and _poll_lock(self._file())
        try:
            yield
        finally:
            if held and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _poll_lock(fd: int) -> bool:
    """flock() ``fd`` exclusively, trying every 50 µs to 1 ms; False after FILE_LOCK_WAIT_S
    (then SQLite's busy handler decides, as in WriterLock._lock_file)."""
    deadline = time.monotonic() + FILE_LOCK_WAIT_S
    pause = 50e-6
    while True:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        if time.monotonic() >= deadline:
            log.warning("store.writer_lock_timeout", waited_s=FILE_LOCK_WAIT_S)
            return False
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


def yield_on_wake() -> None:
    """Called in a connection's database thread: that thread, woken, waits for a free core
    instead of taking the event loop's (Linux ``SCHED_BATCH``: same share of CPU, no wake-up
    preemption). The loop hands it every trip; when the cores are all busy (two relay
    processes, the senders, the upstream) the woken thread used to preempt the loop that woke
    it, only to wait for the GIL the loop still held, and the loop then waited for its core
    back. Measured with two processes, 1 KiB messages, 20 sessions, the cores saturated: ~12 %
    less CPU a message and ~10 % more messages a second; no change with one process (a core is
    free). Elsewhere (no ``SCHED_BATCH``, or not allowed) nothing changes."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: the calling thread


def in_database_thread(dbapi_conn: Any, fn: Callable[[], None]) -> None:
    """Run ``fn()`` in the thread of an aiosqlite connection (SQLAlchemy's adapted one, as the
    pool's events pass it), from a pool event, which runs where it may wait for it."""
    await_(dbapi_conn._connection._execute(fn))


def create_engine(url: str, *, synchronous: str = "FULL") -> AsyncEngine:
    parsed = make_url(url).set(drivername="sqlite+aiosqlite")
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    level = synchronous.upper()
    if level not in _SYNC_LEVELS:
        raise ValueError(f"store.synchronous must be one of {sorted(_SYNC_LEVELS)}")
    # Last in, first out: the connection just given back is the one whose thread is awake and
    # whose page cache holds what was just written. Handed out in turn, each batch went to the
    # other connection, which re-read those pages (1 KiB under load: 2.8 reads a message, now
    # 0.7; 18 % fewer futex waits, ~5 % less CPU a message in paired runs).
    engine = create_async_engine(parsed, connect_args={"timeout": 30}, pool_reset_on_return=None,
                                 pool_use_lifo=True)

    @event.listens_for(engine.sync_engine, "reset")
    def _on_reset(dbapi_conn: Any, record: Any, state: PoolResetState) -> None:
        # In place of the pool's own reset, a ROLLBACK on every connection it takes back: with
        # aiosqlite a trip to the connection's thread and back. SQLAlchemy skips it only after a
        # transaction it ran itself, so it was made after every one-trip group commit
        # (store.deferred), which ends its own: half the database trips under load. Here the
        # connection is asked first. sqlite3 reads that flag from the C library, not the
        # thread; nothing runs on the connection while the pool takes it back.
        if state.asyncio_safe and record.driver_connection.in_transaction:
            dbapi_conn.rollback()

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
        in_database_thread(dbapi_conn, yield_on_wake)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        deferred.check_begin(conn)  # refused in a one-trip group commit: it begins in the trip
        # Only Store.begin() writes. A read holding the write lock would queue behind every
        # writer in SQLite's busy handler (and writers behind it: a sender reading a 30 MB
        # message), outside the WriterLock that orders our writers.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITES) else "BEGIN")

    return engine
