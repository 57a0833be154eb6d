"""Large messages never block the event loop: other clients are greeted promptly meanwhile."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path

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


SENDER = """
import smtplib, sys
raw = open(sys.argv[2], "rb").read()
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=300) as client:
    client.sendmail("reception@oakfield-surgery.nhs.uk", ["ward7.admin@nhs.net"], raw)
print("sent")
"""


@pytest.mark.slow
async def test_ten_30mb_messages_do_not_delay_greetings(relay_factory, sink: Sink, tmp_path: Path) -> None:
    """While ten 30 MB messages arrive and are scanned, every new client is greeted within a second."""
    relay = await relay_factory(smtp={"max_message_size": 40 * 1024 * 1024}, scan={"workers": 2})
    eml = tmp_path / "big.eml"
    eml.write_bytes(big_message(30 * 1024 * 1024))
    # Separate processes: senders in this process would compete with the relay for its GIL.
    senders = [await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, str(relay.smtp_port),
                                                    str(eml), stdout=subprocess.PIPE) for _ in range(10)]
    results = [asyncio.create_task(p.communicate()) for p in senders]
    waits: list[float] = []
    while not all(t.done() for t in results):
        started = time.monotonic()
        async with RawSmtp(relay.smtp_port) as c:
            assert (await c.reply(timeout=10)).startswith("220")
            waits.append(time.monotonic() - started)
            await c.cmd(b"QUIT")
        await asyncio.sleep(0.2)
    assert [(await t)[0].strip() for t in results] == [b"sent"] * 10
    assert len(waits) > 5 and max(waits) < 1.0, f"slowest greeting {max(waits):.2f}s of {len(waits)}"
