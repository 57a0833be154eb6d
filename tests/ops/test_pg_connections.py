"""PostgreSQL closing the relay's connections (a restart, an admin's pg_terminate_backend)."""

from __future__ import annotations

import asyncio

import aiosmtplib
import asyncpg
from sqlalchemy import text

from relayguard.store import State, Store
from relayguard.store.postgres import APPLICATION_NAME
from tests.conftest import PG_ONLY, PG_URL, Sink

RAW = b"From: a@oakfield-surgery.nhs.uk\r\nTo: b@nhs.net\r\nSubject: times\r\n\r\nThursday.\r\n"


async def close_relay_connections() -> int:
    """Have the server end every connection of the relay's; how many it ended."""
    assert PG_URL is not None
    admin = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        closed: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()", APPLICATION_NAME)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the relay's event loop reads the server's goodbye
    return closed


@PG_ONLY
async def test_a_closed_pooled_connection_is_not_handed_out(store: Store) -> None:
    """The first statement after the server closed the pool's connections succeeds: without a
    check on checkout it fails with "connection is closed" (and a web page or a delivery
    claim, which no group commit retries, would fail with it)."""
    async with store.begin() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    assert await close_relay_connections() >= 1
    async with store.begin() as conn:
        assert (await conn.execute(text("SELECT 2"))).scalar() == 2


@PG_ONLY
async def test_the_relay_goes_on_after_the_server_closed_its_connections(relay_factory, sink: Sink) -> None:
    """Mail sent after the connections were closed hears 250 and is delivered."""
    relay = await relay_factory()

    async def send() -> str:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, start_tls=False,
                                   local_hostname="client.test") as client:
            _, reply = await client.sendmail("a@oakfield-surgery.nhs.uk", ["b@nhs.net"], RAW)
        return reply

    first = await send()
    await sink.wait_for(1)
    assert await close_relay_connections() >= 1
    assert (await relay.store.get(first.rsplit(" ", 1)[-1])).state is State.DELIVERED
    assert "queued as" in await send()
    assert (await sink.wait_for(2))[-1].raw == RAW
