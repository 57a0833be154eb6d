"""The store: one interface over SQLite and PostgreSQL (SQLAlchemy Core, async).

Every state change is one transaction. ``accept`` commits the raw bytes, envelope, submitter
and decision together; the SMTP front answers 250 only after it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relayguard.clock import Clock, SystemClock
from relayguard.decision import Action, Decision, Envelope, Submitter
from relayguard.errors import ConflictError, NotFound, StoreError
from relayguard.store import deferred
from relayguard.store import tables as t
from relayguard.store.deferred import insert_at_commit, update_at_commit
from relayguard.store.records import StoredMessage, User
from relayguard.store.states import State

_MIGRATIONS = Path(__file__).with_name("migrations")
# Columns for listings: the message's row; its bytes (tens of megabytes) are in message_bodies.
_SUMMARY_COLUMNS = list(t.messages.c)
_FULL_COLUMNS = [*_SUMMARY_COLUMNS, t.message_bodies.c.raw]
_BODY_OF = t.message_bodies.c.id == t.messages.c.id


T = TypeVar("T")
_Work = tuple[Callable[[AsyncConnection], Awaitable[Any]], "asyncio.Future[Any]"]
_BATCH_MAX = 100  # messages per group commit; bounds the work redone if a batch fails
# Turns of the event loop a group commit waits before it starts, so that works arriving in them
# go with it. Idle, a turn takes microseconds; under load it serves every session first, which
# is when more works arrive. Fewer, larger batches mean fewer trips to the database, and on
# SQLite each trip costs the loop ~8 waits for the GIL the database thread takes (see
# bench/RESULTS.md). 1 KiB, 20 sessions, one process: 9 -> 12 works a batch, 7 pairs 692 -> 762
# msgs/s on average (5 of 7 faster), ~15 % fewer sleeps of the loop a message; 4 turns: no more.
_GATHER_TURNS = 2


async def _insert_message(conn: AsyncConnection, row: dict[str, Any], raw: bytes) -> None:
    """The message's row, then its bytes (the foreign key wants them in this order, which the
    deferred inserts keep: the messages table is queued first)."""
    await insert_at_commit(conn, t.messages, row)
    await insert_at_commit(conn, t.message_bodies, {"id": row["id"], "raw": raw})


# Statements on the per-message path, built once: constructing SQLAlchemy expressions for every
# message cost more CPU than running them (profiled: ~15% of the event loop under load).
_FINISH = (
    update(t.messages)
    .where(t.messages.c.id == bindparam("b_id"), t.messages.c.lease_owner == bindparam("b_owner"))
    .values(state=bindparam("b_state"), results=bindparam("b_results"),
            next_attempt_at=bindparam("b_next"), last_error=bindparam("b_error"),
            lease_owner=None, lease_until=None, updated_at=bindparam("b_now"),
            attempts=t.messages.c.attempts + 1,
            # Keep an earlier delivered_at: a retry after partial delivery must not move it.
            delivered_at=func.coalesce(bindparam("b_delivered"), t.messages.c.delivered_at))
)
_RAW_OF = select(t.message_bodies.c.raw).where(t.message_bodies.c.id == bindparam("b_id"))
CLAIM_RAW_MAX_BYTES = 64 * 1024  # claims carry the bytes of messages up to this size
_RAWS_OF = (select(t.message_bodies.c.id, t.message_bodies.c.raw)
            .where(t.message_bodies.c.id.in_(bindparam("b_ids", expanding=True))))


def new_queue_id() -> str:
    """Time-sortable, unguessable: 13 hex digits of microseconds, then 10 random hex digits."""
    return f"{time.time_ns() // 1000:013x}{secrets.token_hex(5)}"


def _initial_state(decision: Decision) -> State:
    return {Action.DELIVER: State.QUEUED, Action.HOLD: State.HELD,
            Action.REJECT: State.REFUSED}[decision.action]


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Database failures as the store's own errors (the client hears 451). sqlite3's own come
    from the statements deferred.py runs in aiosqlite's thread, asyncpg's from those it runs
    through asyncpg's own calls."""
    pg_conflict, pg_failure = _asyncpg_errors()
    conflicts: tuple[type[Exception], ...] = (IntegrityError, sqlite3.IntegrityError, *pg_conflict)
    failures: tuple[type[Exception], ...] = (OperationalError, DBAPIError, sqlite3.Error, OSError,
                                             *pg_failure)
    try:
        yield
    except conflicts as exc:
        raise ConflictError(f"conflicting change: {getattr(exc, 'orig', exc)}") from exc
    except failures as exc:
        raise StoreError(f"store unavailable: {getattr(exc, 'orig', exc)}") from exc


def _asyncpg_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """asyncpg's conflict and other errors; none where nothing has imported asyncpg (then none
    can be raised), so a SQLite-only relay need not import it."""
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return (), ()
    return (asyncpg.IntegrityConstraintViolationError,), (asyncpg.PostgresError, asyncpg.InterfaceError)


@asynccontextmanager
async def connected(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``async with engine.connect()``, less a task. SQLAlchemy's exit runs ``close()`` in a
    task of its own and waits for it, so that a cancel cannot cut it short: three turns of the
    event loop, and under load a turn serves every session first (~0.3 ms at 20 sessions). On
    a group commit, the relay's one serial step, that was a millisecond of the ~6 a batch took
    (profiled, 1 KiB). With no transaction open ``close()`` has nothing to wait for (it only
    hands the connection back to the pool) and no cancel can land in it: then it runs here
    directly. An error, a cancel or an open transaction take SQLAlchemy's way."""
    conn = await engine.connect()
    try:
        yield conn
    except BaseException as exc:
        await conn.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    if conn.in_transaction():
        await conn.__aexit__(None, None, None)
    else:
        await conn.close()


# Execution option marking a transaction that may write. SQLite opens only those with BEGIN
# IMMEDIATE (its write lock); reads take a WAL snapshot beside the writer (sqlite.create_engine).
WRITES = "relayguard_writes"


class Store:
    """All persistence. Backends differ only in how the engine is made (``sqlite``, ``postgres``)."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock | None = None, schema: str | None = None,
                 url: str = "", write_lock: contextlib.AbstractAsyncContextManager[Any] | None = None,
                 ) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{WRITES: True})
        self.clock: Clock = clock or SystemClock()
        self.schema = schema
        self.url = url
        self.is_postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer: its backend queues ours (sqlite.WriterLock). PostgreSQL needs none.
        self._write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            write_lock or contextlib.nullcontext())
        # Group commits go in one trip where the lock can be split for it (SQLite's).
        self._trip_lock = write_lock if isinstance(write_lock, deferred.TripLock) else None
        self._pending: list[_Work] = []
        self._drainer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision``, by default the newest (safe to call from several
        instances)."""
        async with self.begin() as conn:
            if self.is_postgres:
                # Two instances starting together must not both create the tables (nor the
                # schema: concurrent CREATE SCHEMA IF NOT EXISTS can still fail on a duplicate).
                await conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
                if self.schema:
                    await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(self._upgrade, revision)

    def _upgrade(self, sync_conn: Any, revision: str) -> None:
        from alembic import command  # noqa: PLC0415 - only needed at start-up
        from alembic.config import Config  # noqa: PLC0415

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.attributes["connection"] = sync_conn
        cfg.attributes["schema"] = self.schema
        command.upgrade(cfg, revision)

    async def close(self) -> None:
        # Let a group commit in flight finish: its callers are waiting for their answer.
        if self._drainer is not None and not self._drainer.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._drainer), 10)
        await self.engine.dispose()
        if closer := getattr(self._write_lock, "close", None):
            closer()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; database failures surface as :class:`StoreError` (the client hears 451)."""
        with _reported():
            async with self._write_lock, connected(self._writer) as conn, conn.begin():
                deferred.manage(conn)
                yield conn
                await deferred.flush(conn)

    async def batched(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction shared with other callers waiting at the same moment
        (group commit): one fsync for many messages. The result is returned only after the
        shared transaction committed, so a 250 still means "on disk".

        If any work in a batch fails, the batch is rolled back and each work runs again alone,
        so one bad message cannot fail or delay its neighbours' commit for long.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((work, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return cast(T, await future)

    async def _drain(self) -> None:
        while self._pending:
            for _ in range(_GATHER_TURNS if len(self._pending) < _BATCH_MAX else 0):
                await asyncio.sleep(0)  # one turn of the loop: works that arrive in it join
            batch, self._pending = self._pending[:_BATCH_MAX], self._pending[_BATCH_MAX:]
            try:
                results = await self._run_batch(batch)
            except Exception:  # noqa: BLE001 - retried one by one below, each failing on its own
                for work, future in batch:
                    await self._run_alone(work, future)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _run_batch(self, batch: list[_Work]) -> list[Any]:
        if self._trip_lock is not None:
            with contextlib.suppress(deferred.NeedsTransactionError):
                return await self._run_batch_in_one_trip(batch, self._trip_lock)
        async with self.begin() as conn:
            deferred.manage(conn, batch=True)  # lets finish_attempt() wait for the commit
            return [await work(conn) for work, _ in batch]

    async def _run_batch_in_one_trip(self, batch: list[_Work], lock: deferred.TripLock) -> list[Any]:
        """SQLite: the works run with no transaction open, and their writes go in one trip that
        holds the write lock only from BEGIN to COMMIT (see store.deferred)."""
        with _reported():
            async with connected(self.engine) as conn:
                with deferred.one_trip(conn):
                    results = [await work(conn) for work, _ in batch]
                    await deferred.commit_in_one_trip(conn, lock)
        return results

    async def _run_alone(self, work: Callable[[AsyncConnection], Awaitable[Any]],
                         future: asyncio.Future[Any]) -> None:
        try:
            async with self.begin() as conn:
                result = await work(conn)
        except Exception as exc:  # noqa: BLE001 - handed to the caller waiting on the future
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def execute(self, stmt: Any, conn: AsyncConnection | None = None,
                      params: dict[str, Any] | None = None) -> Any:
        """Run ``stmt`` in the caller's transaction, or in a transaction of its own."""
        if conn is not None:
            return await conn.execute(stmt, params)
        async with self.begin() as own:
            return await own.execute(stmt, params)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # -- accepting ---------------------------------------------------------------------------

    def _message_row(self, *, raw: bytes, envelope: Envelope, submitter: Submitter, decision: Decision,
                     message_id: str | None, subject: str | None, origin: str,
                     state: State | None) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "id": new_queue_id(), "created_at": now, "updated_at": now, "origin": origin,
            "mail_from": envelope.mail_from, "rcpts": json.dumps(list(envelope.rcpt_tos)),
            "submitter": submitter.name, "submitter_kind": submitter.kind.value,
            "client_addr": submitter.client_addr, "message_id": message_id, "subject": subject,
            "size": len(raw), "state": (state or _initial_state(decision)).value,
            "action": decision.action.value, "decision": json.dumps(decision.to_json()),
            "policy_version": decision.policy_version, "attempts": 0, "next_attempt_at": now,
            "results": "{}",
            # Always present: a group commit inserts its rows with one executemany, whose
            # statement takes its columns from the first row (accept_leased() fills these).
            "lease_owner": None, "lease_until": None,
        }

    async def accept(self, *, raw: bytes, envelope: Envelope, submitter: Submitter, decision: Decision,
                     message_id: str | None = None, subject: str | None = None, origin: str = "client",
                     state: State | None = None, conn: AsyncConnection | None = None) -> str:
        """Commit one message with its decision; returns the queue id."""
        row = self._message_row(raw=raw, envelope=envelope, submitter=submitter, decision=decision,
                                message_id=message_id, subject=subject, origin=origin, state=state)
        if conn is not None:
            await _insert_message(conn, row, raw)
        else:
            async with self.begin() as own:
                await _insert_message(own, row, raw)
        return str(row["id"])

    async def accept_leased(self, *, owner: str, lease: float, raw: bytes, envelope: Envelope,
                            submitter: Submitter, decision: Decision, message_id: str | None,
                            subject: str | None, conn: AsyncConnection) -> StoredMessage:
        """Commit a message to deliver already leased to ``owner``, and return it whole: the
        accepting instance sends it straight away, with no claim and no read of its bytes. If
        that instance dies first, the lease runs out (or its restart frees it) as for any claim."""
        row = self._message_row(raw=raw, envelope=envelope, submitter=submitter, decision=decision,
                                message_id=message_id, subject=subject, origin="client",
                                state=State.QUEUED)
        row.update(lease_owner=owner, lease_until=row["created_at"] + lease)
        await _insert_message(conn, row, raw)
        return StoredMessage(
            id=row["id"], created_at=row["created_at"], updated_at=row["updated_at"], origin="client",
            envelope=envelope, submitter=submitter, message_id=message_id, subject=subject,
            size=len(raw), state=State.QUEUED, decision=decision, attempts=0,
            next_attempt_at=row["next_attempt_at"], raw=raw)

    # -- the delivery queue ------------------------------------------------------------------

    async def claim(self, owner: str, *, limit: int, lease: float) -> list[StoredMessage]:
        """Lease up to ``limit`` due messages to ``owner``; an expired lease is fair game."""
        now = self.clock.now()
        due = (
            select(t.messages.c.id)
            .where(t.messages.c.state == State.QUEUED.value, t.messages.c.next_attempt_at <= now,
                   or_(t.messages.c.lease_until.is_(None), t.messages.c.lease_until < now))
            .order_by(t.messages.c.next_attempt_at)
            .limit(limit)
            # PostgreSQL: rows another instance is claiming are skipped, not waited for.
            # SQLite ignores it; BEGIN IMMEDIATE already serialises writers.
            .with_for_update(skip_locked=True)
        )
        # The bytes only of small messages: a batch of large ones would be copied on the event
        # loop here; the sender fetches those with raw_of() right before it sends each.
        stmt = (update(t.messages).where(t.messages.c.id.in_(due))
                .values(lease_owner=owner, lease_until=now + lease)
                .returning(*_SUMMARY_COLUMNS))
        async with self.begin() as conn:
            rows = (await conn.execute(stmt)).fetchall()
            small = [r.id for r in rows if r.size <= CLAIM_RAW_MAX_BYTES]
            raws = {r.id: r.raw for r in await conn.execute(_RAWS_OF, {"b_ids": small})} if small else {}
        claimed = (dataclasses.replace(StoredMessage.from_row(r), raw=raws.get(r.id)) for r in rows)
        return sorted(claimed, key=lambda m: m.next_attempt_at or 0)

    async def release_leases(self, owner: str) -> int:
        """Free every lease ``owner`` holds: called at start-up by the instance of that name,
        whose predecessor died holding them, so its mail need not wait for the leases to expire."""
        stmt = (update(t.messages).where(t.messages.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None))
        return int((await self.execute(stmt)).rowcount)

    async def finish_attempt(self, queue_id: str, owner: str, *, state: State,
                             results: dict[str, dict[str, Any]], next_attempt_at: float | None,
                             error: str | None, conn: AsyncConnection | None = None) -> bool:
        """Record one delivery attempt; False when ``owner`` lost the lease meanwhile."""
        now = self.clock.now()
        params = {"b_id": queue_id, "b_owner": owner, "b_state": state.value,
                  "b_results": json.dumps(results), "b_next": next_attempt_at, "b_error": error,
                  "b_now": now, "b_delivered": now if state is State.DELIVERED else None}
        if conn is None:
            return bool((await self.execute(_FINISH, None, params)).rowcount)
        return await update_at_commit(conn, _FINISH, params)

    async def set_state(self, queue_id: str, state: State, *, expect: Iterable[State],
                        conn: AsyncConnection | None = None, **values: Any) -> None:
        """Move a message to ``state`` only from one of ``expect``; else :class:`ConflictError`."""
        allowed = [s.value for s in expect]
        stmt = (update(t.messages)
                .where(t.messages.c.id == queue_id, t.messages.c.state.in_(allowed))
                .values(state=state.value, updated_at=self.clock.now(), **values))
        if not (await self.execute(stmt, conn)).rowcount:
            # Read through the caller's connection: a second one would wait on its write lock.
            current = await self.get(queue_id, with_raw=False, conn=conn)
            raise ConflictError(f"message {queue_id} is {current.state.value}, not "
                                f"{' or '.join(allowed)}")

    # -- reading -----------------------------------------------------------------------------

    async def get(self, queue_id: str, *, with_raw: bool = True,
                  conn: AsyncConnection | None = None) -> StoredMessage:
        stmt = (select(*_FULL_COLUMNS).outerjoin_from(t.messages, t.message_bodies, _BODY_OF) if with_raw
                else select(*_SUMMARY_COLUMNS)).where(t.messages.c.id == queue_id)
        if conn is not None:
            row = (await conn.execute(stmt)).first()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(stmt)).first()
        if row is None:
            raise NotFound(f"no message {queue_id}")
        return StoredMessage.from_row(row)

    async def raw_of(self, queue_id: str) -> bytes | None:
        """The message's bytes alone (None once purged)."""
        async with self.engine.connect() as conn:
            return cast(bytes | None, (await conn.execute(_RAW_OF, {"b_id": queue_id})).scalar())

    async def list_messages(self, *, states: Sequence[State] | None = None, submitter: str | None = None,
                            since: float | None = None, origin: str | None = None,
                            limit: int = 200, newest_first: bool = True) -> list[StoredMessage]:
        stmt = select(*_SUMMARY_COLUMNS)
        if states:
            stmt = stmt.where(t.messages.c.state.in_([s.value for s in states]))
        if submitter is not None:
            stmt = stmt.where(t.messages.c.submitter == submitter)
        if since is not None:
            stmt = stmt.where(t.messages.c.created_at >= since)
        if origin is not None:
            stmt = stmt.where(t.messages.c.origin == origin)
        order = t.messages.c.created_at.desc() if newest_first else t.messages.c.created_at
        stmt = stmt.order_by(order).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        return [StoredMessage.from_row(r) for r in rows]

    async def iter_messages(self, *, since: float, origin: str = "client",
                            batch: int = 200) -> AsyncIterator[StoredMessage]:
        """Every message since ``since`` that still has its bytes, oldest first (for replay)."""
        after = ""
        while True:
            stmt = (select(*_FULL_COLUMNS)
                    .join_from(t.messages, t.message_bodies, _BODY_OF)
                    .where(t.messages.c.created_at >= since, t.messages.c.origin == origin,
                           t.messages.c.id > after)
                    .order_by(t.messages.c.id).limit(batch))
            async with self.engine.connect() as conn:
                rows = (await conn.execute(stmt)).fetchall()
            if not rows:
                return
            for row in rows:
                yield StoredMessage.from_row(row)
            after = rows[-1]._mapping["id"]

    async def count_since(self, since: float, *, origin: str = "client") -> int:
        stmt = (select(func.count()).select_from(t.messages)
                .where(t.messages.c.created_at >= since, t.messages.c.origin == origin,
                       t.messages.c.purged_at.is_(None)))  # has its bytes, as retention keeps it
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def queue_stats(self) -> dict[str, Any]:
        """Counts by state and the age of the oldest undelivered message (for metrics, readyz)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(t.messages.c.state, func.count()).group_by(t.messages.c.state))).fetchall()
            oldest = (await conn.execute(
                select(func.min(t.messages.c.created_at))
                .where(t.messages.c.state == State.QUEUED.value))).scalar()
        age = self.clock.now() - oldest if oldest is not None else 0.0
        return {"counts": {str(r[0]): int(r[1]) for r in rows}, "oldest_queued_age": age}

    # -- dev-mode capture mailbox ------------------------------------------------------------

    async def add_capture(self, *, queue_id: str, envelope: Envelope, raw: bytes) -> None:
        async with self.begin() as conn:
            await conn.execute(insert(t.capture).values(
                at=self.clock.now(), queue_id=queue_id, mail_from=envelope.mail_from,
                rcpts=json.dumps(list(envelope.rcpt_tos)), raw=raw))

    async def list_capture(self, *, limit: int = 50) -> list[dict[str, Any]]:
        stmt = select(*t.capture.c).order_by(t.capture.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        return [{"id": r.id, "at": r.at, "queue_id": r.queue_id, "mail_from": r.mail_from,
                 "rcpts": json.loads(r.rcpts), "raw": r.raw} for r in rows]

    async def clear_capture(self) -> int:
        async with self.begin() as conn:
            return int((await conn.execute(delete(t.capture))).rowcount)

    # -- users -------------------------------------------------------------------------------

    async def add_user(self, *, name: str, password_hash: str, role: str, email: str | None = None,
                       replace: bool = False) -> None:
        row = {"name": name, "password_hash": password_hash, "role": role, "email": email,
               "created_at": self.clock.now(), "failed_logins": 0, "locked_until": None}
        async with self.begin() as conn:
            if replace:
                await conn.execute(delete(t.users).where(t.users.c.name == name))
            try:
                await conn.execute(insert(t.users).values(**row))
            except IntegrityError as exc:
                raise ConflictError(f"user {name} already exists (use --replace to reset)") from exc

    async def get_user(self, name: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*t.users.c).where(t.users.c.name == name))).first()
        return User.from_row(row) if row else None

    async def list_users(self) -> list[User]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(*t.users.c).order_by(t.users.c.name))).fetchall()
        return [User.from_row(r) for r in rows]

    async def record_login(self, name: str, *, ok: bool, lock_after: int, lock_for: float) -> None:
        """Count failures; ``lock_after`` failures in a row lock the account for ``lock_for`` s."""
        async with self.begin() as conn:
            if ok:
                await conn.execute(update(t.users).where(t.users.c.name == name)
                                   .values(failed_logins=0, locked_until=None))
                return
            await conn.execute(update(t.users).where(t.users.c.name == name)
                               .values(failed_logins=t.users.c.failed_logins + 1))
            failures = (await conn.execute(select(t.users.c.failed_logins)
                                           .where(t.users.c.name == name))).scalar()
            if failures is not None and failures >= lock_after:
                await conn.execute(update(t.users).where(t.users.c.name == name)
                                   .values(locked_until=self.clock.now() + lock_for, failed_logins=0))
