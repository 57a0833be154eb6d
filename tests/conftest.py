"""Fixtures shared by every suite: a recording upstream, stores on both backends, a live relay."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from relayguard.app import Relay
from relayguard.clock import ManualClock
from relayguard.config import Settings
from relayguard.store import Store, open_store

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("RELAYGUARD_TEST_PG_URL")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes


@dataclass
class Sink:
    """The upstream relay stand-in: a real aiosmtpd server that records what it accepts.

    ``replies`` is consumed one entry per DATA (e.g. ``["451 4.3.0 later"]`` then 250s);
    ``refuse`` maps recipients to the reply RCPT gets; ``delay`` slows every DATA down.
    It offers PIPELINING, as NHSmail and Microsoft 365 do, unless ``pipelining`` is False.
    """

    host: str = "127.0.0.1"
    port: int = 0
    got: list[Received] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds each DATA takes: a slow upstream
    server: asyncio.AbstractServer | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    pipelining: bool = True

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads one command at a time, so it takes pipelined ones
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.replies:
            return self.replies.pop(0)
        self.got.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                 envelope.original_content or b""))
        self.arrived.set()
        return "250 2.0.0 sink ok"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test", decode_data=False), self.host, self.port)
        self.port = next(iter(self.server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def wait_for(self, n: int, timeout: float = 15) -> list[Received]:
        async def _until() -> None:
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(_until(), timeout)
        return self.got


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    await s.start()
    yield s
    await s.stop()


def _postgres() -> Any:
    return pytest.param("postgres", marks=pytest.mark.skipif(
        not PG_URL, reason="RELAYGUARD_TEST_PG_URL not set: PostgreSQL backend not tested"))


def _backends() -> list[Any]:
    return ["sqlite", _postgres()]


# For a test of what only the PostgreSQL backend does: its ``store_url`` (and ``store``) is that one.
PG_ONLY = pytest.mark.parametrize("store_url", [_postgres()], indirect=True)
# The same for the SQLite backend.
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


@pytest.fixture(params=_backends())
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh store URL on each backend; PostgreSQL gets a schema of its own, dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/relayguard.db"
        return
    import asyncpg  # noqa: PLC0415

    schema = f"rgtest_{secrets.token_hex(4)}"
    assert PG_URL is not None
    yield f"{PG_URL}?schema={schema}"
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.migrate()
    yield s
    await s.close()


def relay_settings(*, store_url: str, sink: Sink | None,
                   **overrides: Any) -> Settings:
    """Settings for an in-process relay on a free port, delivering to ``sink``."""
    data: dict[str, Any] = {
        "smtp": {"listen": "127.0.0.1:0"},
        "store": {"url": store_url, "synchronous": "NORMAL"},
        "upstream": ({"host": sink.host, "port": sink.port, "tls": "none"} if sink else {}),
        "policy": {"path": str(ROOT / "policies" / "default.yaml"), "watch": False},
        "web": {"enabled": False},
        # The engine in a thread: starting worker processes for every in-process relay would
        # dominate the suite's time. Subprocess relays (crash, multi-instance) use the pool.
        "scan": {"workers": 0},
        "delivery": {"retry_base": 0.05, "retry_max": 0.2, "poll_interval": 0.05},
        "log": {"level": "WARNING"},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return Settings(**data)


RelayFactory = Callable[..., "asyncio.Future[Relay]"]


@pytest.fixture
async def relay_factory(store_url: str, sink: Sink) -> AsyncIterator[Callable[..., Any]]:
    """Start relays in-process (``await relay_factory(smtp={...})``); all stopped afterwards."""
    started: list[Relay] = []

    async def make(*, clock: ManualClock | None = None, **overrides: Any) -> Relay:
        relay = Relay(relay_settings(store_url=store_url, sink=sink, **overrides), clock=clock)
        await relay.start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        await relay.stop()
