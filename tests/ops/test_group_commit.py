"""Group commits: what waits for the commit goes together, and never commits what running the
works one by one would not (relayguard.store.deferred)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard import audit
from relayguard.decision import DELIVER_UNCHANGED, Envelope, Submitter, SubmitterKind
from relayguard.errors import ConflictError
from relayguard.store import State, Store, deferred, open_store, pgcopy
from relayguard.store import tables as t
from relayguard.store.base import _BATCH_MAX, connected
from tests.conftest import PG_ONLY, SQLITE_ONLY
from tests.relay.test_relay_core import PLAIN

ENVELOPE = Envelope("a@example.org", ("b@example.org",))
WHO = Submitter("a@example.org", SubmitterKind.NETWORK, "127.0.0.1")


async def _leased(store: Store, count: int) -> list[str]:
    ids = [await store.accept(raw=PLAIN, envelope=ENVELOPE, submitter=WHO, decision=DELIVER_UNCHANGED)
           for _ in range(count)]
    claimed = await store.claim("me", limit=count, lease=300)
    assert sorted(m.id for m in claimed) == sorted(ids)
    return ids


async def _finish(store: Store, queue_id: str) -> bool:
    async def work(conn: AsyncConnection) -> bool:  # as the delivery worker records an outcome
        owned = await store.finish_attempt(queue_id, "me", state=State.DELIVERED, results={},
                                           next_attempt_at=None, error=None, conn=conn)
        if owned:
            await audit.append(conn, at=store.clock.now(), actor="relayguard",
                               action="delivered", obj=queue_id)
        return owned
    return await store.batched(work)


async def test_a_lost_lease_in_a_group_commit_is_seen_and_the_others_commit(store: Store) -> None:
    ids = await _leased(store, 3)
    # Another instance took the middle one over (its lease had run out there).
    await store.execute(text("UPDATE messages SET lease_owner = 'other' WHERE id = :id"),
                        params={"id": ids[1]})

    assert await asyncio.gather(*(_finish(store, i) for i in ids)) == [True, False, True]
    states = {m.id: (m.state, m.attempts) for m in await store.list_messages()}
    assert states == {ids[0]: (State.DELIVERED, 1), ids[1]: (State.QUEUED, 0),
                      ids[2]: (State.DELIVERED, 1)}
    logged = [e.object for e in await audit.entries(store, action="delivered")]
    assert sorted(logged) == sorted([ids[0], ids[2]])
    assert (await audit.verify(store))[0]


async def test_a_deferred_update_that_changes_no_row_fails_the_whole_transaction(store: Store) -> None:
    [queue_id] = await _leased(store, 1)

    async def accept_and_finish_unowned() -> None:
        async with store.begin() as conn:
            deferred.manage(conn, batch=True)
            await store.accept(raw=PLAIN, envelope=ENVELOPE, submitter=WHO,
                               decision=DELIVER_UNCHANGED, conn=conn)
            # Not the lease holder: assumed to succeed now, found out at the commit.
            assert await store.finish_attempt(queue_id, "not-me", state=State.DELIVERED, results={},
                                              next_attempt_at=None, error=None, conn=conn)

    with pytest.raises(deferred.LostUpdateError):
        await accept_and_finish_unowned()
    assert [m.id for m in await store.list_messages()] == [queue_id]  # the accept rolled back too


async def test_outside_a_group_commit_an_update_runs_at_once(store: Store) -> None:
    [queue_id] = await _leased(store, 1)
    async with store.begin() as conn:
        assert not await store.finish_attempt(queue_id, "not-me", state=State.DELIVERED, results={},
                                              next_attempt_at=None, error=None, conn=conn)
        assert await store.finish_attempt(queue_id, "me", state=State.DELIVERED, results={},
                                          next_attempt_at=None, error=None, conn=conn)
    assert (await store.get(queue_id, with_raw=False)).state is State.DELIVERED


# -- one-trip group commits (SQLite) and their fallbacks (both backends) ----------------------

def _accepting(store: Store) -> Callable[[AsyncConnection], Awaitable[str]]:
    async def work(conn: AsyncConnection) -> str:  # as the relay commits a message it accepted
        queue_id = await store.accept(raw=PLAIN, envelope=ENVELOPE, submitter=WHO,
                                      decision=DELIVER_UNCHANGED, conn=conn)
        await audit.append(conn, at=store.clock.now(), actor=WHO.name, action="decided", obj=queue_id)
        return queue_id
    return work


async def test_a_work_that_comes_a_turn_of_the_loop_later_joins_the_group_commit(store: Store) -> None:
    """A group commit waits a couple of turns of the event loop before it starts: under load
    works keep arriving, and fewer, larger batches cost fewer trips to the database."""
    conns: list[AsyncConnection] = []
    accept = _accepting(store)

    async def work(conn: AsyncConnection) -> str:
        conns.append(conn)
        return await accept(conn)

    first = asyncio.ensure_future(store.batched(work))
    await asyncio.sleep(0)  # the first work is waiting, and its batch's drainer is made
    ids = await asyncio.gather(first, store.batched(work))
    assert len(conns) == 2 and conns[0] is conns[1]  # one batch: one transaction's connection
    assert sorted(m.id for m in await store.list_messages()) == sorted(ids)


async def test_a_full_group_commit_starts_without_waiting_for_more(store: Store) -> None:
    """Waiting a turn or two for more works is pointless when a batch is full already."""
    loop = asyncio.get_running_loop()
    accept = _accepting(store)

    async def turns_to_first_work(count: int) -> int:
        turn, first = 0, []

        def tick() -> None:  # counts the loop's turns while the works are under way
            nonlocal turn
            turn += 1
            if not first:
                loop.call_soon(tick)

        async def work(conn: AsyncConnection) -> str:
            if not first:
                first.append(turn)
            return await accept(conn)

        loop.call_soon(tick)
        await asyncio.gather(*(store.batched(work) for _ in range(count)))
        return first[0]

    assert await turns_to_first_work(_BATCH_MAX) < await turns_to_first_work(1)


async def test_on_sqlite_a_group_commit_opens_no_transaction_while_its_works_run(store: Store) -> None:
    """The writes go to the database thread with BEGIN and COMMIT, in one trip: SQLAlchemy never
    begins a transaction of its own, so the write lock is not held while the event loop runs."""
    begun: list[object] = []

    def on_begin(conn: object) -> None:
        begun.append(conn)

    event.listen(store.engine.sync_engine, "begin", on_begin)
    try:
        ids = await asyncio.gather(*(store.batched(_accepting(store)) for _ in range(5)))
    finally:
        event.remove(store.engine.sync_engine, "begin", on_begin)
    assert sorted(m.id for m in await store.list_messages()) == sorted(ids)
    assert [e.object for e in await audit.entries(store)] == ids  # chained in commit order
    assert (await audit.verify(store))[0]
    if store.is_postgres:
        assert 1 <= len(begun) <= 5  # group-committed, in ordinary transactions
    else:
        assert not begun


@dataclass
class _Statements:
    through_sqlalchemy: list[str] = field(default_factory=list)
    through_asyncpg: list[tuple[str, Any]] = field(default_factory=list)  # (query, args); no COPY
    # In aiosqlite's thread, as SQLite's trace callback reports them: the one-trip commits'
    # statements included, which SQLAlchemy never sees.
    through_sqlite3: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _statements(store: Store) -> Iterator[_Statements]:
    """The statements the store runs meanwhile, by the way they went."""
    seen = _Statements()

    def sqlalchemy_statement(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        seen.through_sqlalchemy.append(sql)

    def asyncpg_query(logged: Any) -> None:
        seen.through_asyncpg.append((logged.query, logged.args))

    def log_queries(dbapi_conn: Any, _record: object, _proxy: object) -> None:
        if store.is_postgres:
            dbapi_conn.driver_connection.add_query_logger(asyncpg_query)  # a set: added once
        else:
            dbapi_conn.run_async(lambda aio: aio.set_trace_callback(seen.through_sqlite3.append))

    def stop_tracing(dbapi_conn: Any, _record: object) -> None:
        if not store.is_postgres:
            dbapi_conn.run_async(lambda aio: aio.set_trace_callback(None))

    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", sqlalchemy_statement)
    event.listen(engine, "checkout", log_queries)
    event.listen(engine, "checkin", stop_tracing)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", sqlalchemy_statement)
        event.remove(engine, "checkout", log_queries)
        event.remove(engine, "checkin", stop_tracing)


@PG_ONLY
async def test_on_postgresql_a_group_commit_updates_every_outcome_in_one_statement(store: Store) -> None:
    """Ten deliveries' outcomes and audit entries, committed together: asyncpg runs the UPDATE
    once for all of them (a trip each was what SQLAlchemy's execute took), and nothing of the
    group commit goes through SQLAlchemy's statements."""
    ids = await _leased(store, 10)
    with _statements(store) as seen:
        outcomes = await asyncio.gather(*(_finish(store, i) for i in ids))
    assert outcomes == [True] * 10
    assert {m.state for m in await store.list_messages()} == {State.DELIVERED}
    assert sorted(e.object for e in await audit.entries(store, action="delivered")) == sorted(ids)
    assert (await audit.verify(store))[0]
    assert seen.through_sqlalchemy == []
    updates = [q for q, _ in seen.through_asyncpg if q.startswith("UPDATE messages")]
    assert 1 <= len(updates) < len(ids)  # one a batch, however the ten fell into batches


@SQLITE_ONLY
async def test_on_sqlite_a_group_commit_writes_each_table_and_the_outcomes_in_one_statement(
        store: Store) -> None:
    """Ten accepts, then ten outcomes, each lot committed together: sqlite3 lets go of the GIL
    for every statement (executemany's every row too), and each time it waited for the event
    loop's thread to give it back. So the rows of a table go in one INSERT and the outcomes in
    one UPDATE ... FROM (VALUES ...), and they are all there, chained, afterwards."""
    with _statements(store) as accepting:
        ids = await asyncio.gather(*(store.batched(_accepting(store)) for _ in range(10)))
    claimed = await store.claim("me", limit=10, lease=300)
    assert sorted(m.id for m in claimed) == sorted(ids)
    with _statements(store) as finishing:
        outcomes = await asyncio.gather(*(_finish(store, i) for i in ids))

    assert outcomes == [True] * 10
    messages = await store.list_messages()
    assert sorted(m.id for m in messages) == sorted(ids)
    assert {(m.state, m.attempts) for m in messages} == {(State.DELIVERED, 1)}
    assert [e.object for e in await audit.entries(store, action="decided")] == ids
    assert sorted(e.object for e in await audit.entries(store, action="delivered")) == sorted(ids)
    assert (await audit.verify(store))[0]
    inserts = [s for s in accepting.through_sqlite3 if s.startswith("INSERT INTO messages ")]
    assert 1 <= len(inserts) < len(ids)
    updates = [s for s in finishing.through_sqlite3 if s.startswith("UPDATE messages")]
    assert 1 <= len(updates) < len(ids)
    assert any(" FROM (VALUES " in s for s in updates)


@SQLITE_ONLY
async def test_on_sqlite_large_bodies_in_a_group_commit_go_in_one_by_one(store: Store) -> None:
    """SQLite copies every blob it is bound: bodies over a MiB each go in a statement of their
    own (as executemany's rows did), so a commit holds one large body's copy at a time."""
    large = [b"Subject: scans\r\n\r\n" + base64.encodebytes(os.urandom(2 << 20)) for _ in range(3)]

    async def accept(raw: bytes) -> str:
        return await store.batched(lambda conn: store.accept(
            raw=raw, envelope=ENVELOPE, submitter=WHO, decision=DELIVER_UNCHANGED, conn=conn))

    with _statements(store) as seen:
        ids = await asyncio.gather(*(accept(raw) for raw in [*large, PLAIN, PLAIN]))
    assert [(await store.get(i)).raw for i in ids] == [*large, PLAIN, PLAIN]
    bodies = [s for s in seen.through_sqlite3 if s.startswith("INSERT INTO message_bodies")]
    assert len(bodies) >= len(large)


@SQLITE_ONLY
async def test_on_sqlite_two_outcomes_for_one_message_in_a_group_commit_are_run_one_by_one(
        store: Store) -> None:
    """One UPDATE ... FROM changes a row once however many of its rows name it: the count is
    short, and the batch runs again work by work, where the second outcome finds no lease."""
    [queue_id] = await _leased(store, 1)
    assert sorted(await asyncio.gather(_finish(store, queue_id), _finish(store, queue_id))) == [
        False, True]
    [message] = await store.list_messages()
    assert (message.state, message.attempts) == (State.DELIVERED, 1)
    assert [e.object for e in await audit.entries(store, action="delivered")] == [queue_id]


LARGE = b"Subject: scans\r\n\r\n" + bytes(range(256)) * (3 << 12)  # 3 MiB, every byte value


@PG_ONLY
async def test_on_postgresql_a_large_message_goes_in_by_copy_with_its_neighbours(store: Store) -> None:
    """A body over pgcopy.COPY_MIN_BYTES is streamed by COPY (asyncpg would hold four copies of
    it to bind it), in the same transaction as the small messages committed with it."""
    async def accepting_large(conn: AsyncConnection) -> str:
        return await store.accept(raw=LARGE, envelope=ENVELOPE, submitter=WHO,
                                  decision=DELIVER_UNCHANGED, conn=conn)

    assert len(LARGE) > pgcopy.COPY_MIN_BYTES
    with _statements(store) as seen:
        small, large, other = await asyncio.gather(store.batched(_accepting(store)),
                                                   store.batched(accepting_large),
                                                   store.batched(_accepting(store)))
    assert await store.raw_of(large) == LARGE
    assert await store.raw_of(small) == await store.raw_of(other) == PLAIN
    bound = [args for q, args in seen.through_asyncpg if q.startswith("INSERT INTO message_bodies")]
    assert bound  # the small ones' bodies, in an executemany
    assert not any(LARGE in row for args in bound for row in args)  # not the large one's
    assert (await store.get(large, with_raw=False)).size == len(LARGE)


@PG_ONLY
async def test_on_postgresql_a_large_body_that_conflicts_fails_alone(store: Store) -> None:
    taken = await store.batched(_accepting(store))

    async def duplicate(conn: AsyncConnection) -> str:
        await deferred.insert_at_commit(conn, t.message_bodies, {"id": taken, "raw": LARGE})
        return taken

    results = await asyncio.gather(store.batched(_accepting(store)), store.batched(duplicate),
                                   return_exceptions=True)
    assert isinstance(results[1], ConflictError)
    assert await store.raw_of(taken) == PLAIN
    assert len(await store.list_messages()) == 2


async def test_a_work_that_runs_its_own_statement_still_commits_once(store: Store) -> None:
    """Such a work needs a transaction while it runs: on SQLite the one-trip commit gives way to
    an ordinary one for the whole batch, even when the work swallows the refusal."""
    async def noting(conn: AsyncConnection) -> str:
        queue_id = await _accepting(store)(conn)
        # A careless work swallows the refusal: the batch must still not commit without it.
        with contextlib.suppress(deferred.NeedsTransactionError):
            await conn.execute(text("INSERT INTO users (name, password_hash, role, created_at, "
                                    "failed_logins) VALUES ('noted', '-', 'admin', 0, 0)"))
        return queue_id

    ids = await asyncio.gather(store.batched(_accepting(store)), store.batched(noting),
                               store.batched(_accepting(store)))
    assert sorted(m.id for m in await store.list_messages()) == sorted(ids)
    assert [u.name for u in await store.list_users()] == ["noted"]  # its statement ran, once
    assert len(await audit.entries(store)) == 3
    assert (await audit.verify(store))[0]


async def test_a_statement_refused_in_a_one_trip_commit(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    await store.migrate()
    try:
        async with store.engine.connect() as conn:
            with deferred.one_trip(conn):
                with pytest.raises(deferred.NeedsTransactionError):
                    await conn.execute(text("SELECT 1"))
                with pytest.raises(deferred.NeedsTransactionError):  # spoiled for good
                    await deferred.commit_in_one_trip(conn, store._trip_lock)  # type: ignore[arg-type]
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1  # outside it, as ever
    finally:
        await store.close()


async def test_a_failing_write_in_a_batch_fails_alone(store: Store) -> None:
    """A row that cannot be inserted rolls the whole batch back, the lock is let go, and the
    works run again one by one: only the bad one fails."""
    taken = await store.batched(_accepting(store))

    async def duplicate(conn: AsyncConnection) -> str:
        await deferred.insert_at_commit(conn, t.message_bodies, {"id": taken, "raw": b"again"})
        return taken

    results = await asyncio.gather(store.batched(_accepting(store)), store.batched(duplicate),
                                   store.batched(_accepting(store)), return_exceptions=True)
    assert isinstance(results[1], ConflictError)
    assert len(await store.list_messages()) == 3
    assert len(await audit.entries(store)) == 3
    assert (await audit.verify(store))[0]
    assert await store.batched(_accepting(store))  # nothing left locked


async def test_two_stores_on_one_file_keep_one_chain(store_url: str) -> None:
    """Two instances (as ``smtp.processes`` runs them) group-commit at once: each batch links
    its entries after the other's, under the lock, and nothing is lost."""
    one, two = open_store(store_url), open_store(store_url)
    await one.migrate()
    try:
        ids = await asyncio.gather(*(s.batched(_accepting(s)) for _ in range(40) for s in (one, two)))
        assert len(set(ids)) == 80
        assert len(await one.list_messages(limit=100)) == 80
        assert sorted(e.object for e in await audit.entries(two)) == sorted(ids)
        assert (await audit.verify(one))[0]
    finally:
        await one.close()
        await two.close()


@contextlib.contextmanager
def _rollback_trips() -> Iterator[list[bool]]:
    """Every ROLLBACK sent to aiosqlite's thread, as whether SQLite had a transaction open."""
    import aiosqlite  # noqa: PLC0415

    seen: list[bool] = []
    original = aiosqlite.Connection.rollback

    async def rollback(self: aiosqlite.Connection) -> None:
        seen.append(self.in_transaction)
        await original(self)

    aiosqlite.Connection.rollback = rollback  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        aiosqlite.Connection.rollback = original  # type: ignore[method-assign]


@SQLITE_ONLY
async def test_on_sqlite_the_pool_rolls_back_only_a_connection_with_a_transaction_open(
        store: Store) -> None:
    """A one-trip group commit ends its own transaction in the database thread. SQLAlchemy did
    not know, and sent every such connection back to that thread for a ROLLBACK as the pool took
    it back: half the trips under load. A connection given back mid-transaction still gets one."""
    with _rollback_trips() as trips:
        ids = await asyncio.gather(*(store.batched(_accepting(store)) for _ in range(5)))
        assert trips == []
        async with store.engine.connect() as conn:  # a read: BEGIN (deferred), never committed
            await conn.execute(text("SELECT count(*) FROM messages"))
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None and driver.in_transaction
        assert trips == [True]
        assert not driver.in_transaction
    assert sorted(m.id for m in await store.list_messages()) == sorted(ids)


@SQLITE_ONLY
async def test_on_sqlite_the_pool_hands_out_the_connection_given_back_last(store: Store) -> None:
    """Each pooled SQLite connection has its own thread and page cache. Handed out in turn
    (first in, first out), every batch woke a thread that had slept through the last one and
    re-read the pages the other connection had just written (1 KiB under load: 2.8 reads a
    message, against 0.7 now)."""
    async with store.engine.connect() as first, store.engine.connect() as second:
        drivers = [(await conn.get_raw_connection()).driver_connection for conn in (first, second)]
    # The exits run innermost first: `first` is given back last.
    async with store.engine.connect() as again:
        assert (await again.get_raw_connection()).driver_connection is drivers[0]


@SQLITE_ONLY
@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
async def test_on_sqlite_every_database_thread_yields_to_the_event_loop_when_woken(store: Store) -> None:
    """Each pooled connection's thread runs under SCHED_BATCH, so that waking it (every trip)
    does not preempt the event loop that woke it when the cores are all busy (two relay
    processes: ~12 % less CPU a message). The event loop's own thread keeps the default."""
    async with store.engine.connect() as first, store.engine.connect() as second:
        drivers = [(await conn.get_raw_connection()).driver_connection for conn in (first, second)]
        policies = [await driver._execute(os.sched_getscheduler, 0) for driver in drivers]
    assert len({id(driver) for driver in drivers}) == 2
    assert policies == [os.SCHED_BATCH, os.SCHED_BATCH]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


async def test_a_connection_with_no_transaction_open_is_given_back_without_a_turn_of_the_loop(
        store: Store) -> None:
    """SQLAlchemy's ``async with engine.connect()`` closes in a task of its own and waits for
    it: three turns of the event loop, ~1 ms of each group commit under load. With nothing to
    roll back, ``connected`` closes within the caller's turn."""
    loop = asyncio.get_running_loop()
    turned: list[bool] = []
    async with connected(store.engine) as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        await conn.commit()
        loop.call_soon(turned.append, True)  # runs at the loop's next turn
    assert turned == []
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("leaving", ["mid-transaction", "by an error"])
async def test_a_connection_left_mid_transaction_or_by_an_error_is_rolled_back_and_given_back(
        store: Store, leaving: str) -> None:
    with contextlib.suppress(RuntimeError):
        async with connected(store.engine) as conn:
            await conn.execute(t.alert_state.insert().values(key="left", last_at=0.0))
            if leaving == "by an error":
                raise RuntimeError("the work failed")
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with connected(store.engine) as conn:
        assert (await conn.execute(text("SELECT count(*) FROM alert_state"))).scalar() == 0
