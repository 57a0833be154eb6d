"""A message's bytes live apart from its row: state changes never copy them, and the migration
that moved them there keeps every message's bytes (and every purge) as they were."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import text

from relayguard.clock import ManualClock
from relayguard.store import State, Store, open_store
from relayguard.store.ops import purge_bodies
from tests.ops.conftest import DELIVER, accept, finish

_OLD_ROW = """INSERT INTO messages (id, created_at, updated_at, origin, mail_from, rcpts, submitter,
    submitter_kind, client_addr, message_id, subject, size, raw, state, action, decision,
    policy_version, attempts, next_attempt_at, results, purged_at)
    VALUES (:id, 1.0, 1.0, 'client', 'a@x.nhs.uk', '["b@nhs.net"]', 'a@x.nhs.uk', 'network', '',
    NULL, 'old', :size, :raw, :state, 'deliver', :decision, 'v1', 0, 1.0, '{}', :purged)"""


async def test_migrating_an_old_store_keeps_every_message_s_bytes(store_url: str,
                                                                   clock: ManualClock) -> None:
    old = open_store(store_url, clock=clock)
    await old.migrate("0001")
    decision = '{"action": "deliver", "policy_version": "v1"}'
    async with old.begin() as conn:
        await conn.execute(text(_OLD_ROW), {"id": "kept", "size": 5, "raw": b"Hi\r\n\r\n",
                                            "state": "queued", "decision": decision, "purged": None})
        await conn.execute(text(_OLD_ROW), {"id": "purged", "size": 5, "raw": None,
                                            "state": "delivered", "decision": decision, "purged": 2.0})
        await conn.execute(text("INSERT INTO approvals (message_id, reviewer, at) "
                                "VALUES ('kept', 'pm', 1.0)"))
    await old.migrate()
    try:
        assert (await old.get("kept")).raw == b"Hi\r\n\r\n"
        assert await old.raw_of("kept") == b"Hi\r\n\r\n"
        purged = await old.get("purged")
        assert (purged.raw, purged.purged_at) == (None, 2.0)
        [claimed] = await old.claim("w", limit=10, lease=60)
        assert (claimed.id, claimed.raw) == ("kept", b"Hi\r\n\r\n")
        async with old.engine.connect() as conn:
            approvals = (await conn.execute(text("SELECT message_id FROM approvals"))).scalars().all()
        assert approvals == ["kept"]
    finally:
        await old.close()


async def test_claim_carries_small_messages_bytes_and_leaves_large_ones_to_raw_of(store: Store) -> None:
    small = await accept(store)
    big_raw = b"Subject: scans\r\n\r\n" + b"x" * (100 * 1024) + b"\r\n"
    template = await store.get(small, with_raw=False)
    big = await store.accept(raw=big_raw, envelope=template.envelope, submitter=template.submitter,
                             decision=DELIVER)
    claimed = {m.id: m for m in await store.claim("w", limit=10, lease=60)}
    assert claimed[small].raw is not None and claimed[small].raw.startswith(b"Subject: Referral")
    assert claimed[big].raw is None
    assert await store.raw_of(big) == big_raw


async def test_purge_drops_the_bytes_and_keeps_the_row(store: Store, clock: ManualClock) -> None:
    queue_id = await accept(store)
    await finish(store, queue_id, State.DELIVERED)
    async with store.begin() as conn:
        purged = await purge_bodies(conn, before=clock.now() + 1, now=clock.now(), limit=10)
    assert purged == [queue_id]
    message = await store.get(queue_id)
    assert (message.raw, message.purged_at, message.state) == (None, clock.now(), State.DELIVERED)
    assert await store.raw_of(queue_id) is None
    async with store.begin() as conn:  # a second purge finds nothing left to drop
        assert await purge_bodies(conn, before=clock.now() + 1, now=clock.now(), limit=10) == []


async def test_claiming_and_finishing_a_large_message_does_not_copy_its_bytes(tmp_path: Path) -> None:
    """SQLite writes a whole row again when a column's size changes: with the bytes in the row,
    every claim and outcome of a 25 MiB message wrote 25 MiB more (seconds under the write lock)."""
    store = open_store(f"sqlite:///{tmp_path}/rg.db")
    await store.migrate()
    wal = tmp_path / "rg.db-wal"
    try:
        raw = b"Subject: scans\r\n\r\n" + os.urandom(4 * 1024 * 1024).hex().encode() + b"\r\n"
        seed = await accept(store)
        template = await store.get(seed)
        queue_id = await store.accept(raw=raw, envelope=template.envelope,
                                      submitter=template.submitter, decision=DELIVER)
        async with store.engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert wal.stat().st_size == 0
        await finish(store, queue_id, State.DELIVERED)
        assert wal.stat().st_size < 256 * 1024, f"WAL grew {wal.stat().st_size} bytes"
        assert await store.raw_of(queue_id) == raw
    finally:
        await store.close()


async def test_message_bytes_are_lz4_on_postgresql_and_as_they_are_on_sqlite(store: Store) -> None:
    """pglz cost the PostgreSQL server 1.6 ms of CPU per 100 KiB message; lz4 a third of that.
    SQLite keeps a blob as it is given (migration 0003 does nothing there)."""
    template = await store.get(await accept(store), with_raw=False)
    raw = b"Subject: notes\r\n\r\n" + b"clinic letter text\r\n" * 5000
    big = await store.accept(raw=raw, envelope=template.envelope, submitter=template.submitter,
                             decision=DELIVER)
    assert await store.raw_of(big) == raw
    async with store.engine.connect() as conn:
        if not store.is_postgres:
            stored = (await conn.execute(text("SELECT typeof(raw), length(raw) FROM message_bodies "
                                              "WHERE id = :id"), {"id": big})).one()
            assert tuple(stored) == ("blob", len(raw))
            return
        method = (await conn.execute(text("SELECT pg_column_compression(raw) FROM message_bodies "
                                          "WHERE id = :id"), {"id": big})).scalar()
        declared = (await conn.execute(text(
            "SELECT attcompression::text FROM pg_attribute WHERE attname = 'raw' AND attrelid IN "
            "('message_bodies'::regclass, 'capture'::regclass)"))).scalars().all()
    assert method == "lz4"
    assert declared == ["l", "l"]
