"""Large messages never block the event loop: other clients are greeted promptly meanwhile."""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import time

import pytest

from tests.conftest import Sink
from tests.security.rawsmtp import RawSmtp

HEAD = (b"From: reception@oakfield-surgery.nhs.uk\r\nTo: ward7.admin@nhs.net\r\nSubject: scans\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain\r\n\r\nScans attached.\r\n--B\r\nContent-Type: application/octet-stream; "
        b"name=scan.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n")


def big_message(size: int) -> bytes:
    encoded = base64.encodebytes(os.urandom(size * 3 // 4))
    return HEAD + encoded.replace(b"\n", b"\r\n") + b"--B--\r\n"


def send_blocking(port: int, raw: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
        client.sendmail("reception@oakfield-surgery.nhs.uk", ["ward7.admin@nhs.net"], raw)
    return "sent"


@pytest.mark.slow
@pytest.mark.xfail(run=False, reason="known gap: parsing and receiving no longer block the loop (scan "
                   "workers, chunked DATA reader), but aiosmtplib normalises and dot-stuffs each 30 MB "
                   "message on the event loop while delivering it (~0.2 s each), so greetings can wait "
                   "over 1 s when deliveries overlap arrivals; see docs/SECURITY.md")
async def test_ten_30mb_messages_do_not_delay_greetings(relay_factory, sink: Sink) -> None:
    """While ten 30 MB messages arrive and are scanned, every new client is greeted within a second."""
    relay = await relay_factory(smtp={"max_message_size": 40 * 1024 * 1024})
    raw = big_message(30 * 1024 * 1024)
    senders = [asyncio.create_task(asyncio.to_thread(send_blocking, relay.smtp_port, raw)) for _ in range(10)]
    waits: list[float] = []
    while not all(t.done() for t in senders):
        started = time.monotonic()
        async with RawSmtp(relay.smtp_port) as c:
            assert (await c.reply(timeout=10)).startswith("220")
            waits.append(time.monotonic() - started)
            await c.cmd(b"QUIT")
        await asyncio.sleep(0.2)
    assert [t.result() for t in senders] == ["sent"] * 10
    assert len(waits) > 5 and max(waits) < 1.0, f"slowest greeting {max(waits):.2f}s of {len(waits)}"
