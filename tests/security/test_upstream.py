"""The upstream side: TLS required and verified, nothing injected, faults deferred and retried."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from aiosmtplib.email import quote_address
from pydantic import ValidationError

from relayguard import devcert
from relayguard import upstream as upstream_mod
from relayguard.config import UpstreamSettings, UpstreamTls
from relayguard.decision import Envelope as RgEnvelope
from relayguard.errors import DeliveryError
from relayguard.store import State
from relayguard.upstream import SmtpUpstream
from tests.conftest import Sink
from tests.relay.test_relay_core import PLAIN, send
from tests.security.rawsmtp import RawSmtp


@dataclass
class RecordingSink(Sink):
    """The conftest sink, optionally offering STARTTLS, recording every HELO and RCPT it hears."""

    context: ssl.SSLContext | None = None
    helos: list[str] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)
    reset_next: int = 0  # DATA commands to answer by dropping the connection

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        self.helos.append(hostname)
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        self.rcpts.append(address)
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reset_next:
            self.reset_next -= 1
            assert server.transport is not None
            server.transport.abort()  # a TCP reset in the middle of the transaction
            return "451 gone"
        return await super().handle_DATA(server, session, envelope)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test", decode_data=False, tls_context=self.context,
                         require_starttls=self.context is not None),
            self.host, self.port)
        self.port = next(iter(self.server.sockets)).getsockname()[1]


@pytest.fixture
async def sink(tmp_path: Path) -> Any:
    """Overrides the conftest sink for this module: relay_factory delivers to a RecordingSink."""
    s = RecordingSink()
    await s.start()
    yield s
    await s.stop()


def tls_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    cert, key = tmp_path / "up.pem", tmp_path / "up.key"
    devcert.make(cert, key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


async def wait_state(relay: Any, queue_id: str, predicate: Any, timeout: float = 10) -> Any:
    for _ in range(int(timeout / 0.05)):
        stored = await relay.store.get(queue_id)
        if predicate(stored):
            return stored
        await asyncio.sleep(0.05)
    return stored


async def test_default_upstream_settings_require_verified_starttls() -> None:
    """Out of the box the upstream client demands STARTTLS and verifies the certificate."""
    client = SmtpUpstream(UpstreamSettings(host="127.0.0.1"))._new_client()
    assert client._start_tls_on_connect is True and client.validate_certs is True  # not opportunistic


async def test_upstream_without_starttls_defers_and_sends_nothing_in_clear(relay_factory,
                                                                         sink: RecordingSink) -> None:
    """With STARTTLS required and an upstream that does not offer it, the message is deferred, not sent."""
    relay = await relay_factory(upstream={"tls": "starttls"})
    _, reply = await send(relay.smtp_port)
    stored = await wait_state(relay, reply.rsplit(" ", 1)[-1], lambda m: m.attempts >= 1)
    assert stored.state is State.QUEUED and "STARTTLS" in (stored.last_error or "")
    assert sink.got == [] and sink.rcpts == []  # not even an envelope went out in clear


async def test_bad_upstream_certificate_defers_and_a_trusted_one_delivers(relay_factory, sink: RecordingSink,
                                                                         tmp_path: Path) -> None:
    """A self-signed upstream certificate is refused (deferred, nothing sent); trusting it delivers."""
    sink.context, cert = tls_server_context(tmp_path)
    await sink.stop()
    await sink.start()
    relay = await relay_factory(upstream={"tls": "starttls", "port": sink.port})
    _, reply = await send(relay.smtp_port)
    stored = await wait_state(relay, reply.rsplit(" ", 1)[-1], lambda m: m.attempts >= 1)
    assert stored.state is State.QUEUED and "CERTIFICATE_VERIFY_FAILED" in (stored.last_error or "")
    assert sink.got == [] and sink.rcpts == []
    # The dev certificate names "localhost" (its IP entry is a DNS name, which TLS does not match).
    trusting = await relay_factory(upstream={"tls": "starttls", "host": "localhost", "port": sink.port,
                                             "ca_file": str(cert)})
    await send(trusting.smtp_port)
    got = await sink.wait_for(1)  # the deferred one and/or the new one: over verified TLS either way
    assert got[0].raw == PLAIN


async def test_control_characters_in_envelope_or_helo_never_reach_the_upstream(sink: RecordingSink) -> None:
    """A CR/LF in a stored envelope address or in the HELO name is refused before it is written."""
    upstream = SmtpUpstream(UpstreamSettings(host=sink.host, port=sink.port, tls="none"))
    for envelope in (RgEnvelope("a@oakfield-surgery.nhs.uk\r\nRCPT TO:<evil@gmail.com>", ("w@nhs.net",)),
                     RgEnvelope("a@oakfield-surgery.nhs.uk", ("w@nhs.net>\r\nRCPT TO:<evil@gmail.com",))):
        with pytest.raises(DeliveryError):
            await upstream.send(envelope, PLAIN, queue_id="q1")
    await upstream.close()
    # The HELO name is refused when settings load; should one slip past (model_construct skips
    # validation), the upstream still refuses to write it.
    with pytest.raises(ValidationError, match="helo"):
        UpstreamSettings(host=sink.host, port=sink.port, tls="none", helo="relay\r\nRCPT TO:<x@y.z>")
    bad_helo = SmtpUpstream(UpstreamSettings.model_construct(
        host=sink.host, port=sink.port, tls=UpstreamTls.NONE, verify=True, ca_file=None, username=None,
        password=None, helo="relay\r\nRCPT TO:<evil@gmail.com>", timeout=10))
    with pytest.raises(DeliveryError):
        await bad_helo.send(RgEnvelope("a@oakfield-surgery.nhs.uk", ("w@nhs.net",)), PLAIN, queue_id="q2")
    await bad_helo.close()
    assert sink.got == [] and "evil@gmail.com" not in sink.rcpts
    assert not any("\r" in h or "\n" in h for h in sink.helos)


async def test_client_helo_is_not_passed_upstream(relay_factory, sink: RecordingSink) -> None:
    """Whatever the client says in EHLO, the upstream hears only the configured HELO name."""
    relay = await relay_factory()
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        assert (await c.cmd(b"EHLO evil.example\tRCPT TO:<x@gmail.com>")).startswith("250")
        await c.cmd(b"MAIL FROM:<reception@oakfield-surgery.nhs.uk>")
        await c.cmd(b"RCPT TO:<ward7.admin@nhs.net>")
        await c.cmd(b"DATA")
        assert (await c.cmd(PLAIN + b".")).startswith("250")
    await sink.wait_for(1)
    assert sink.helos and set(sink.helos) == {"relayguard.localdomain"}


async def test_reset_mid_data_is_deferred_then_delivered(relay_factory, sink: RecordingSink) -> None:
    """The upstream dropping the connection during DATA defers the message; the retry delivers it."""
    sink.reset_next = 2  # the first attempt and its one immediate reconnect both fail
    relay = await relay_factory()
    _, reply = await send(relay.smtp_port)
    [got] = await sink.wait_for(1)
    stored = await wait_state(relay, reply.rsplit(" ", 1)[-1], lambda m: m.state is State.DELIVERED)
    assert stored.state is State.DELIVERED and stored.attempts >= 2 and got.raw == PLAIN


async def test_slow_upstream_times_out_and_is_retried(relay_factory, sink: RecordingSink) -> None:
    """An upstream slower than upstream.timeout defers the message rather than hanging the worker."""
    sink.delay = 3.0
    relay = await relay_factory(upstream={"timeout": 0.5})
    _, reply = await send(relay.smtp_port)
    queue_id = reply.rsplit(" ", 1)[-1]
    stored = await wait_state(relay, queue_id, lambda m: m.attempts >= 1)
    assert stored.state is State.QUEUED and "Timeout" in (stored.last_error or "")
    sink.delay = 0.0
    stored = await wait_state(relay, queue_id, lambda m: m.state is State.DELIVERED)
    assert stored.state is State.DELIVERED


ADDRESSES = ["ward7.admin@nhs.net", "Ward7+referrals@NHS.net", "o'brien@example.org", "\"j doe\"@nhs.net",
             "a@[192.0.2.1]", "x_y-z@sub.example.co.uk"]


@pytest.mark.parametrize("address", ["", *ADDRESSES])
def test_envelope_addresses_are_quoted_as_aiosmtplib_quotes_them(address: str) -> None:
    assert upstream_mod._quoted(address) == quote_address(address).encode("ascii")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "round-trips"])
async def test_the_upstream_hears_every_envelope_address_as_given(sink: RecordingSink,
                                                                  pipelining: bool) -> None:
    """MAIL and RCPT as we write them (plain addresses without aiosmtplib's parser): the null
    sender, quoted local parts and address literals arrive as they were; a refused recipient is
    reported with the upstream's reply and the others still get the message. The same whether
    the upstream offers PIPELINING or not."""
    sink.pipelining = pipelining
    sink.refuse = {"x_y-z@sub.example.co.uk": "550 5.1.1 no such user"}
    upstream = SmtpUpstream(UpstreamSettings(host=sink.host, port=sink.port, tls="none"))
    try:
        results = await upstream.send(RgEnvelope("", tuple(ADDRESSES)), PLAIN, queue_id="q1")
    finally:
        await upstream.close()
    assert results["x_y-z@sub.example.co.uk"][0] == 550
    assert {r for r, (code, _) in results.items() if code == 250} == set(ADDRESSES[:-1])
    assert sink.rcpts == ADDRESSES
    assert [(g.mail_from, g.rcpt_tos) for g in sink.got] == [("<>", ADDRESSES[:-1])]
