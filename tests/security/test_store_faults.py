"""Store faults at accept time: the client hears 451, never 250 for a message that was not committed."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import resource
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from structlog.testing import capture_logs

from relayguard.app import Relay
from relayguard.smtp import FrontLimits, RelayHandler, start_server
from relayguard.store import open_store
from tests.conftest import Sink, relay_settings
from tests.relay.test_relay_core import PLAIN
from tests.security.rawsmtp import RawSmtp

FROM, TO = b"reception@oakfield-surgery.nhs.uk", b"ward7.admin@nhs.net"


async def submit(port: int, raw: bytes = PLAIN) -> str:
    async with RawSmtp(port) as c:
        await c.envelope(FROM, TO)
        assert (await c.cmd(b"DATA")).startswith("354")
        return await c.cmd(raw + b".", timeout=30)


@contextlib.asynccontextmanager
async def front_only(store_url: str, sink: Sink, *, busy_ms: int | None = None) -> AsyncIterator[int]:
    """The real handler, decide and commit of a Relay on ``store_url``, without migrating or delivering
    (the store is broken before the relay could start). ``busy_ms`` shortens SQLite's busy timeout."""
    relay = Relay(relay_settings(store_url=store_url, sink=sink))
    if busy_ms is not None:
        @event.listens_for(relay.store.engine.sync_engine, "connect")
        def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.cursor().execute(f"PRAGMA busy_timeout={busy_ms}")  # after the store's 30 s

    handler = RelayHandler(limits=FrontLimits(max_recipients=10, trusted_networks=(
        ipaddress.ip_network("127.0.0.0/8"),)), decide=relay.decide, commit=relay.commit)
    server = await start_server(handler, settings=relay.settings.smtp, verify=relay.verify_login)
    try:
        yield next(iter(server.sockets)).getsockname()[1]
    finally:
        server.close()
        await relay.store.close()


async def migrated(path: Path) -> str:
    url = f"sqlite:///{path}"
    store = open_store(url)
    await store.migrate()
    await store.close()
    return url


async def test_postgres_down_gives_451(sink: Sink) -> None:
    """With PostgreSQL unreachable (a closed port) the client hears 451 4.3.0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    async with front_only(f"postgresql+asyncpg://rg:rg@127.0.0.1:{port}/rg", sink) as smtp:
        reply = await submit(smtp)
    assert reply.startswith("451 4.3.0"), reply
    assert sink.got == []


async def test_read_only_database_gives_451(sink: Sink, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that cannot be written (opened read-only; root ignores chmod) gives 451, nothing kept."""
    url = await migrated(tmp_path / "rg.db")
    monkeypatch.chdir(tmp_path)  # create_engine makes the parent folder of "file:..." relative to cwd
    async with front_only(f"sqlite:///file:{tmp_path}/rg.db?mode=ro&uri=true", sink) as smtp:
        reply = await submit(smtp)
    assert reply.startswith("451 4.3.0"), reply
    store = open_store(url)
    assert await store.list_messages() == []
    await store.close()


async def test_locked_database_gives_451_then_accepts_once_free(sink: Sink, tmp_path: Path) -> None:
    """An exclusive lock held by another connection gives 451 once the busy timeout runs out; when the
    lock is gone the message is accepted and stored once."""
    url = await migrated(tmp_path / "rg.db")
    locker = sqlite3.connect(tmp_path / "rg.db", isolation_level=None)
    try:
        async with front_only(url, sink, busy_ms=300) as smtp:
            locker.execute("BEGIN EXCLUSIVE")
            reply = await submit(smtp)
            assert reply.startswith("451 4.3.0"), reply
            locker.execute("ROLLBACK")
            assert (await submit(smtp)).startswith("250")
    finally:
        locker.close()
    store = open_store(url)
    assert len(await store.list_messages()) == 1
    await store.close()


async def test_disk_full_gives_451(sink: Sink, tmp_path: Path) -> None:
    """When the store's files cannot grow (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk)
    a 1 MB message gets 451 and the failure is logged as a store failure."""
    relay = Relay(relay_settings(store_url=await migrated(tmp_path / "rg.db"), sink=sink))
    await relay.start()
    big = PLAIN + (b"x" * 998 + b"\r\n") * 1000
    largest = max(p.stat().st_size for p in tmp_path.iterdir() if p.is_file())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with capture_logs() as logs:  # structlog captures in memory: no log file can hit the limit
            resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 256 * 1024, hard))
            reply = await submit(relay.smtp_port, big)
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    try:
        assert reply.startswith("451 4.3.0"), reply
        assert any(e.get("outcome") == "store_failed" for e in logs), logs
        await asyncio.sleep(0.1)
        assert await relay.store.list_messages() == []
    finally:
        await relay.stop()
