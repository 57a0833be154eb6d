"""A finished SMTP session is freed by reference counting, not left for the cyclic garbage
collector (RelaySMTP._unlink): under load that collector's work was ~3 % of the relay's CPU."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator

from relayguard.smtp.server import RelaySMTP
from tests.conftest import SQLITE_ONLY
from tests.relay.test_relay_core import send


def _sessions() -> int:
    return sum(isinstance(o, RelaySMTP) for o in gc.get_objects())


@contextlib.contextmanager
def _no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _until_gone(before: int) -> int:
    """The live sessions once they are back to ``before`` (polled up to 3 s: connection_lost
    and the session's task finish a loop turn or two after the client has gone)."""
    for _ in range(60):
        if (now := _sessions()) <= before:
            return now
        await asyncio.sleep(0.05)
    return _sessions()


async def _hang_up(port: int, *commands: bytes) -> None:
    """A client that drops the connection without QUIT, after ``commands``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # the greeting
    for command in commands:
        writer.write(command)
        await reader.readline()
    writer.close()
    await writer.wait_closed()


@SQLITE_ONLY
async def test_finished_sessions_are_freed_without_the_garbage_collector(relay_factory) -> None:
    relay = await relay_factory()
    await send(relay.smtp_port)  # warm: anything made once, on first use, is made now
    with _no_collector():
        before = _sessions()
        for _ in range(3):
            await send(relay.smtp_port)  # ends with QUIT
        await _hang_up(relay.smtp_port)
        await _hang_up(relay.smtp_port, b"EHLO client.test\r\n", b"MAIL FROM:<a@example.org>\r\n")
        assert await _until_gone(before) == before

