"""RelaySMTP writes a multiline reply (EHLO's) in one write, with the bytes aiosmtpd 1.4.6 writes
line by line."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from relayguard.config import SmtpSettings
from relayguard.smtp.server import RelaySMTP, SessionLimiter

SETTINGS = SmtpSettings(hostname="relay.test", max_message_size=10_000_000)


class _Writes:
    """A stream writer that keeps each write apart: one entry is one socket write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


async def _never(*_: object) -> str:
    raise AssertionError("no AUTH here")


def _relay() -> RelaySMTP:
    return RelaySMTP(object(),  # type: ignore[arg-type]  # EHLO calls no hook
                     settings=SETTINGS, verify=_never, limiter=SessionLimiter(total=1, per_ip=1),
                     tls_context=None)


def _plain() -> SMTP:
    """aiosmtpd with the options RelaySMTP gives it that shape the EHLO reply."""
    return SMTP(object(), hostname=SETTINGS.hostname, data_size_limit=SETTINGS.max_message_size,
                enable_SMTPUTF8=True, decode_data=False, auth_require_tls=True)


def _offline(server: SMTP) -> _Writes:
    """Ready ``server`` to run a command without a socket; returns what it writes to."""
    writer = _Writes()
    srv: Any = server
    srv._reader, srv._writer, srv.transport = asyncio.StreamReader(), writer, object()
    srv.session = srv._create_session()
    return writer


async def test_the_ehlo_reply_is_one_write_of_the_same_bytes() -> None:
    plain, relay = _plain(), _relay()
    plain_out, relay_out = _offline(plain), _offline(relay)
    await plain.smtp_EHLO("client.test")
    await relay.smtp_EHLO("client.test")
    assert len(plain_out.writes) >= 5  # aiosmtpd: a write (and a drain) a line
    assert relay_out.writes == [b"".join(plain_out.writes)]
    assert relay_out.writes[0].endswith(b"\r\n250 HELP\r\n")


@pytest.mark.parametrize("last", ["250 done", b"250 done"], ids=["str", "bytes"])
async def test_held_lines_go_out_before_the_last_in_order(last: str | bytes) -> None:
    relay = _relay()
    out = _offline(relay)
    await relay.push("250-one")
    await relay.push("250-two")
    assert out.writes == []  # nothing a client could act on yet
    await relay.push(last)
    assert b"".join(out.writes) == b"250-one\r\n250-two\r\n250 done\r\n"
    await relay.push("354 go on")  # a single-line reply after it goes as it is
    assert out.writes[-1] == b"354 go on\r\n"
