"""Durability: a relay killed with SIGKILL mid-stream loses nothing it answered 250 for."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import ROOT, Sink

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    def __init__(self, *, store_url: str, sink: Sink, log: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ,
                    "RELAYGUARD_SMTP__LISTEN": f"127.0.0.1:{self.port}",
                    "RELAYGUARD_UPSTREAM__HOST": "127.0.0.1",
                    "RELAYGUARD_UPSTREAM__PORT": str(sink.port),
                    "RELAYGUARD_UPSTREAM__TLS": "none",
                    "RELAYGUARD_STORE__URL": store_url,
                    "RELAYGUARD_POLICY__PATH": str(ROOT / "policies/default.yaml"),
                    "RELAYGUARD_WEB__LISTEN": f"127.0.0.1:{_free_port()}"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(ROOT / ".venv/bin/relayguard"), "serve"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(300):
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError("relay did not listen within 30 s")

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process group and wait without blocking the loop (the sink lives on it)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            for _ in range(200):
                if self.proc.poll() is not None:
                    return
                await asyncio.sleep(0.05)
            os.killpg(self.proc.pid, signal.SIGKILL)


def _message(i: int) -> bytes:
    return (f"From: reception@oakfield-surgery.nhs.uk\r\nTo: ward7.admin@nhs.net\r\n"
            f"Subject: crash {i}\r\nMessage-ID: <crash{i}@oakfield-surgery.nhs.uk>\r\n\r\n"
            f"Letter {i}.\r\n").encode()


async def test_sigkill_mid_stream_loses_nothing(store_url: str, sink: Sink, tmp_path: Path) -> None:
    """50 messages get 250 around a SIGKILL; after a restart every one of them reaches the sink."""
    sink.delay = 0.05  # a slow upstream, so accepted mail is still queued at the kill
    relay = RelayProcess(store_url=store_url, sink=sink, log=tmp_path / "relay.log")
    await relay.start()
    accepted: list[int] = []
    i = 0
    while len(accepted) < 50:
        if len(accepted) == 25 and relay.proc and relay.proc.poll() is None:
            await relay.kill()
            await relay.start()
        try:
            await aiosmtplib.send(_message(i), sender="reception@oakfield-surgery.nhs.uk",
                                  recipients=["ward7.admin@nhs.net"], hostname="127.0.0.1",
                                  port=relay.port, start_tls=False, timeout=10)
            accepted.append(i)
        except (aiosmtplib.SMTPException, OSError):
            pass
        i += 1
    def lost() -> list[int]:
        # At-least-once: the kill may cause duplicates, so compare sets, not counts.
        seen = {line for g in sink.got for line in g.raw.split(b"\r\n") if line.startswith(b"Subject: ")}
        return [n for n in accepted if f"Subject: crash {n}".encode() not in seen]

    try:
        for _ in range(600):
            if not lost():
                break
            await asyncio.sleep(0.1)
    finally:
        await relay.kill(signal.SIGTERM)
    assert lost() == [], f"lost after SIGKILL: {lost()}"
