"""Two instances appending to the audit chain at once, each in group commits that write other
rows before the chain is linked at the commit: the chain stays one unbroken line, and every
row of every batch is there."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard import audit
from relayguard.store import Store, open_store
from relayguard.store.deferred import insert_at_commit
from relayguard.store.tables import alert_state

PER_INSTANCE = 60


def _work(name: str, i: int) -> Any:
    async def work(conn: AsyncConnection) -> None:
        # Another table's row first, as a message's bytes come before its audit entry.
        await insert_at_commit(conn, alert_state, {"key": f"{name}-{i}", "last_at": float(i),
                                                   "details": "{}"})
        await audit.append(conn, at=float(i), actor=name, action="decided", obj=f"{name}-{i}")
    return work


async def _instance(url: str, name: str) -> None:
    store = open_store(url)
    try:
        await asyncio.gather(*(store.batched(_work(name, i)) for i in range(PER_INSTANCE)))
    finally:
        await store.close()


async def test_two_instances_keep_one_chain(store: Store, store_url: str) -> None:
    await asyncio.gather(_instance(store_url, "a"), _instance(store_url, "b"))
    ok, seq, reason = await audit.verify(store)
    assert ok, (seq, reason)
    got = await audit.entries(store)
    assert [e.seq for e in got] == list(range(1, 2 * PER_INSTANCE + 1))
    assert sorted(e.object for e in got) == sorted(f"{n}-{i}" for n in "ab" for i in range(PER_INSTANCE))
    async with store.begin() as conn:
        rows = (await conn.execute(select(func.count()).select_from(alert_state))).scalar()
    assert rows == 2 * PER_INSTANCE
