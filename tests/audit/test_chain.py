"""The hash-chained audit trail: appends, verification, tamper detection and export."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from relayguard import audit
from relayguard.clock import ManualClock
from relayguard.store import Store, open_store


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    s = open_store(f"sqlite:///{tmp_path}/t.db", clock=ManualClock())
    await s.migrate()
    yield s
    await s.close()


async def _fill(store: Store, n: int = 3) -> None:
    for i in range(n):
        async with store.begin() as conn:
            await audit.append(conn, at=store.clock.now() + i, actor="alice", action="viewed",
                               obj=f"q{i}", details={"i": i})


async def test_empty_chain_verifies(store: Store) -> None:
    """An empty trail is intact."""
    ok, seq, _ = await audit.verify(store)
    assert (ok, seq) == (True, None)


async def test_entries_chain_from_genesis(store: Store) -> None:
    """The first entry chains from 64 zeros and each later one from its predecessor's hash."""
    await _fill(store)
    got = await audit.entries(store)
    assert [e.seq for e in got] == [1, 2, 3]
    assert got[0].prev_hash == audit.GENESIS
    assert [got[1].prev_hash, got[2].prev_hash] == [got[0].hash, got[1].hash]
    assert (await audit.verify(store))[0] is True


async def test_edited_row_is_detected(store: Store, tmp_path: Path) -> None:
    """Editing one row directly in the database makes verify name that entry."""
    await _fill(store)
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("UPDATE audit SET actor='mallory' WHERE seq=2")
    ok, seq, reason = await audit.verify(store)
    assert (ok, seq) == (False, 2)
    assert "edited" in reason


async def test_deleted_row_is_detected(store: Store, tmp_path: Path) -> None:
    """Deleting a row from the middle of the chain is reported at the entry after the gap."""
    await _fill(store)
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("DELETE FROM audit WHERE seq=2")
    ok, seq, _ = await audit.verify(store)
    assert (ok, seq) == (False, 3)


async def test_rolled_back_transaction_leaves_no_entry(store: Store) -> None:
    """An append inside a transaction that fails is rolled back with it."""
    async def fail_after_append() -> None:
        async with store.begin() as conn:
            await audit.append(conn, at=1.0, actor="a", action="held", obj="x")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fail_after_append()
    assert await audit.entries(store) == []


async def test_identifier_shaped_details_are_masked(store: Store) -> None:
    """A 10-digit identifier slipped into details never reaches the table."""
    async with store.begin() as conn:
        await audit.append(conn, at=1.0, actor="a", action="rejected", obj="x",
                           details={"reason": "has 943 476 5919 in it", "id": "18c5f3a2b4d1234567890"})
    (entry,) = await audit.entries(store)
    assert "943 476 5919" not in json.dumps(entry.details)
    assert entry.details["id"] == "18c5f3a2b4d1234567890"
    assert (await audit.verify(store))[0]


async def test_export_writes_json_lines(store: Store) -> None:
    """Export writes one parseable JSON object per entry, in chain order."""
    await _fill(store)
    out = io.StringIO()
    assert await audit.export(store, out) == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[0]["object"] == "q0"
