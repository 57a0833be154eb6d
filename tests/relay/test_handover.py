"""Mail to deliver goes from acceptance straight to the delivery worker, leased in the same
transaction; when the worker has no room, or the message is large, it is claimed as before."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from relayguard.decision import DELIVER_UNCHANGED, Envelope, Submitter, SubmitterKind
from relayguard.delivery import HAND_OVER_MAX_BYTES
from relayguard.store import State
from relayguard.store.base import CLAIM_RAW_MAX_BYTES
from tests.conftest import Sink
from tests.relay.test_relay_core import PLAIN, send, wait_until


async def test_handed_over_mail_is_leased_at_commit_and_delivered_once(relay_factory, sink: Sink) -> None:
    sink.delay = 0.5  # the first attempt is still running while we look at the row
    relay = await relay_factory(delivery={"poll_interval": 60})  # no poll could have found it
    _, reply = await send(relay.smtp_port)
    queue_id = reply.rsplit(" ", 1)[-1]
    row = await relay.store.get(queue_id, with_raw=False)
    assert row.state is State.QUEUED and row.attempts == 0
    leases = await relay.store.execute(
        text("SELECT lease_owner, lease_until FROM messages WHERE id = :id"), params={"id": queue_id})
    owner, until = leases.one()
    assert owner == relay.worker.owner and until > row.created_at  # leased in the accepting commit
    await sink.wait_for(1)
    done = await wait_until(relay.store, queue_id, lambda m: m.state is State.DELIVERED)
    assert done.attempts == 1 and len(sink.got) == 1


async def test_mail_beyond_the_queue_room_is_claimed_and_all_delivered(relay_factory, sink: Sink) -> None:
    """Leased and unleased rows share group commits; each is sent exactly once."""
    sink.delay = 0.05
    relay = await relay_factory(delivery={"workers": 1})  # room for 4 hand-overs
    replies = await asyncio.gather(*(send(relay.smtp_port, PLAIN.replace(b"Thursday", f"day {i}".encode()))
                                     for i in range(20)))
    ids = [reply.rsplit(" ", 1)[-1] for _, reply in replies]
    got = await sink.wait_for(20, timeout=30)
    assert sorted(r.raw for r in got) == sorted(
        PLAIN.replace(b"Thursday", f"day {i}".encode()) for i in range(20))
    for queue_id in ids:
        done = await wait_until(relay.store, queue_id, lambda m: m.state is State.DELIVERED)
        assert done.attempts == 1
    assert len(sink.got) == 20  # none sent twice (a hand-over also claimed would be)


async def test_large_mail_is_not_held_in_memory_but_claimed(relay_factory, sink: Sink) -> None:
    big = PLAIN.replace(b"The clinic", b"\r\n".join([b"y" * 998] * (HAND_OVER_MAX_BYTES // 1000 + 10))
                        + b"\r\nThe clinic")
    relay = await relay_factory()
    assert not relay.worker.reserve(len(big))
    _, reply = await send(relay.smtp_port, big)
    [got] = await sink.wait_for(1)
    assert got.raw == big
    await wait_until(relay.store, reply.rsplit(" ", 1)[-1], lambda m: m.state is State.DELIVERED)


async def test_reserve_is_bounded_and_refused_when_not_running(relay_factory, sink: Sink) -> None:
    relay = await relay_factory(delivery={"workers": 2})
    worker = relay.worker
    await asyncio.sleep(0.05)  # its run() task has started
    assert [worker.reserve(100) for _ in range(9)] == [True] * 8 + [False]
    for _ in range(8):
        worker.hand_over(None)  # failed commits give their places back
    assert worker.reserve(100)
    worker.hand_over(None)
    worker.stop()
    assert not worker.reserve(100)


async def test_leased_and_unleased_rows_in_one_group_commit_keep_their_leases(store) -> None:
    """One executemany inserts a group commit's rows: a leased row after an unleased one must
    keep its lease (else it would be claimed, and sent, a second time)."""
    envelope = Envelope("a@example.org", ("b@example.org",))
    who = Submitter("a@example.org", SubmitterKind.NETWORK, "127.0.0.1")

    async def both(conn):
        plain = await store.accept(raw=PLAIN, envelope=envelope, submitter=who,
                                   decision=DELIVER_UNCHANGED, conn=conn)
        leased = await store.accept_leased(owner="me", lease=300, raw=PLAIN, envelope=envelope,
                                           submitter=who, decision=DELIVER_UNCHANGED,
                                           message_id=None, subject=None, conn=conn)
        return plain, leased.id

    plain, leased = await store.batched(both)
    rows = dict((await store.execute(text("SELECT id, lease_owner FROM messages"))).all())
    assert rows == {plain: None, leased: "me"}
    [claimed] = await store.claim("other", limit=10, lease=60)
    assert claimed.id == plain and claimed.raw == PLAIN  # a small message's bytes come along


async def test_claims_leave_large_bytes_for_the_sender_to_read(store) -> None:
    big = PLAIN + b"z" * (CLAIM_RAW_MAX_BYTES + 1)
    queue_id = await store.accept(raw=big, envelope=Envelope("a@example.org", ("b@example.org",)),
                                  submitter=Submitter("a@example.org", SubmitterKind.NETWORK),
                                  decision=DELIVER_UNCHANGED)
    [claimed] = await store.claim("me", limit=10, lease=60)
    assert claimed.id == queue_id and claimed.raw is None
    assert await store.raw_of(queue_id) == big
