"""Group commits: what waits for the commit goes together, and never commits what running the
works one by one would not (relayguard.store.deferred)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from relayguard import audit
from relayguard.decision import DELIVER_UNCHANGED, Envelope, Submitter, SubmitterKind
from relayguard.store import State, Store, deferred
from tests.relay.test_relay_core import PLAIN

ENVELOPE = Envelope("a@example.org", ("b@example.org",))
WHO = Submitter("a@example.org", SubmitterKind.NETWORK, "127.0.0.1")


async def _leased(store: Store, count: int) -> list[str]:
    ids = [await store.accept(raw=PLAIN, envelope=ENVELOPE, submitter=WHO, decision=DELIVER_UNCHANGED)
           for _ in range(count)]
    claimed = await store.claim("me", limit=count, lease=300)
    assert sorted(m.id for m in claimed) == sorted(ids)
    return ids


async def test_a_lost_lease_in_a_group_commit_is_seen_and_the_others_commit(store: Store) -> None:
    ids = await _leased(store, 3)
    # Another instance took the middle one over (its lease had run out there).
    await store.execute(text("UPDATE messages SET lease_owner = 'other' WHERE id = :id"),
                        params={"id": ids[1]})

    async def finish(queue_id: str) -> bool:
        async def work(conn):  # as the delivery worker records an outcome
            owned = await store.finish_attempt(queue_id, "me", state=State.DELIVERED, results={},
                                               next_attempt_at=None, error=None, conn=conn)
            if owned:
                await audit.append(conn, at=store.clock.now(), actor="relayguard",
                                   action="delivered", obj=queue_id)
            return owned
        return await store.batched(work)

    assert await asyncio.gather(*(finish(i) for i in ids)) == [True, False, True]
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
