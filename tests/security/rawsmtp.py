"""A raw SMTP client for hostile input: writes exactly the bytes given, reads whole replies."""

from __future__ import annotations

import asyncio
import ssl
from types import TracebackType

from relayguard.decision import Decision, Envelope, Submitter
from relayguard.policy import engine


class RawSmtp:
    """``async with RawSmtp(port) as c``; ``await c.cmd(b"EHLO x")`` returns the reply text."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawSmtp:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.writer is not None:
            self.writer.close()

    async def reply(self, timeout: float = 10) -> str:
        """One whole reply (all ``250-`` continuation lines), decoded; "" when the peer closed."""
        assert self.reader is not None
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                return "\n".join(lines)
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    async def replies(self, timeout: float = 1.0) -> list[str]:
        """Every reply still to come until the peer is silent for ``timeout`` s or closes."""
        out = []
        try:
            while text := await self.reply(timeout):
                out.append(text)
        except TimeoutError:
            pass
        return out

    async def write(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: bytes, timeout: float = 10) -> str:
        await self.write(line + b"\r\n")
        return await self.reply(timeout)

    async def starttls(self) -> None:
        assert self.writer is not None
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the relay's dev certificate
        await self.writer.start_tls(ctx)

    async def envelope(self, mail_from: bytes, *rcpts: bytes) -> None:
        """Greeting, EHLO, MAIL and RCPTs, each asserted to be accepted."""
        assert (await self.reply()).startswith("220")
        assert (await self.cmd(b"EHLO client.test")).startswith("250")
        assert (reply := await self.cmd(b"MAIL FROM:<" + mail_from + b">")).startswith("250"), reply
        for rcpt in rcpts:
            assert (reply := await self.cmd(b"RCPT TO:<" + rcpt + b">")).startswith("250"), reply


class DecideRecorder:
    """Wraps ``engine.decide`` (install with monkeypatch) and keeps the bytes the policy saw."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self._decide = engine.decide

    def __call__(self, raw: bytes, envelope: Envelope, submitter: Submitter, policy: object,
                 **kwargs: object) -> Decision:
        self.seen.append(raw)
        return self._decide(raw, envelope, submitter, policy, **kwargs)  # type: ignore[arg-type]
