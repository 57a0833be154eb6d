"""Retention: bodies of finished mail are purged after purge_after; metadata and audit stay."""

from __future__ import annotations

from relayguard import audit, retention
from relayguard.clock import ManualClock
from relayguard.config import Settings
from relayguard.store import State, Store
from tests.ops.conftest import HOLD, accept, finish

DAY = 86400


async def test_finished_bodies_are_purged_after_purge_after(store: Store, settings: Settings,
                                                            clock: ManualClock) -> None:
    """Delivered, bounced and refused mail loses its body after 7 days; queued and held keep theirs."""
    delivered, bounced, refused = await accept(store), await accept(store), await accept(store)
    queued, held = await accept(store), await accept(store, decision=HOLD)
    await finish(store, delivered, State.DELIVERED)
    await finish(store, bounced, State.BOUNCED, code=550)
    await store.set_state(refused, State.REFUSED, expect=[State.QUEUED])
    clock.advance(6 * DAY)
    assert (await retention.purge(store, settings)).count == 0
    clock.advance(DAY + 60)
    result = await retention.purge(store, settings)
    assert result.count == 3
    for queue_id in (delivered, bounced, refused):
        gone = await store.get(queue_id)
        assert gone.raw is None and gone.purged_at == clock.now()
        assert gone.decision.policy_version == "test" and gone.envelope.rcpt_tos  # metadata stays
    for queue_id in (queued, held):
        assert (await store.get(queue_id)).raw is not None


async def test_each_run_is_one_audit_entry(store: Store, settings: Settings, clock: ManualClock) -> None:
    """One purge run writes one 'purged' entry with the count and id range; an idle run writes none."""
    ids = sorted([await accept(store) for _ in range(3)])
    for queue_id in ids:
        await finish(store, queue_id, State.DELIVERED)
    clock.advance(8 * DAY)
    await retention.purge(store, settings)
    await retention.purge(store, settings)
    [entry] = await audit.entries(store, action="purged")
    assert entry.details["count"] == 3
    assert (entry.details["first_id"], entry.details["last_id"]) == (ids[0], ids[-1])
    assert (await audit.verify(store))[0]


async def test_a_purge_backlog_is_worked_off_in_batches(store: Store, settings: Settings,
                                                        clock: ManualClock) -> None:
    """With a batch limit, successive runs purge the rest, each run audited once."""
    for _ in range(5):
        await finish(store, await accept(store), State.DELIVERED)
    clock.advance(8 * DAY)
    counts = [(await retention.purge(store, settings, limit=2)).count for _ in range(4)]
    assert counts == [2, 2, 1, 0]
    assert len(await audit.entries(store, action="purged")) == 3
