"""RFC 2920 PIPELINING to the upstream: MAIL, RCPT and DATA go in one group, and every reply in
the group is checked, also when a non-compliant upstream takes DATA after refusing everyone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from relayguard.config import UpstreamSettings
from relayguard.decision import Envelope
from relayguard.errors import DeliveryError
from relayguard.pipelining import PipeliningProtocol
from relayguard.upstream import SmtpUpstream
from tests.conftest import Sink

BODY = b"Subject: pipelined\r\n\r\nline one\r\n.starts with a dot\r\n"
RCPTS = ("a@nhs.net", "b@nhs.net", "c@nhs.net")


@dataclass
class ScriptedUpstream:
    """A raw upstream that offers PIPELINING and answers a transaction's commands only once its
    DATA has arrived, so a client that waits for each reply in turn waits until it times out.

    ``groups`` records the commands each group brought before any reply; ``bodies`` each message
    as it came (still dot-stuffed, without the final dot); ``others`` every other command.
    """

    mail_reply: bytes = b"250 2.1.0 sender ok"
    rcpt_replies: dict[bytes, bytes] = field(default_factory=dict)  # address -> reply
    data_reply: bytes = b"354 go ahead"
    split: bool = False  # write the group's replies a byte at a time
    hang: int = 0  # groups to leave unanswered
    drop: int = 0  # groups to answer by closing the connection
    garble: bool = False  # answer the group with a line that is no SMTP reply
    groups: list[list[bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    others: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = next(iter(self.server.sockets)).getsockname()[1]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            writer.write(b"220 scripted ESMTP\r\n")
            while line := await reader.readline():
                if not await self._command(line.rstrip(b"\r\n"), reader, writer):
                    break
        finally:
            writer.close()
            self.closed.set()

    async def _command(self, cmd: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        verb = cmd[:4].upper()
        if verb != b"MAIL":
            self.others.append(cmd)
            writer.write({b"EHLO": b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                          b"QUIT": b"221 bye\r\n"}.get(verb, b"250 ok\r\n"))
            return verb != b"QUIT"
        group = [cmd]
        while not group[-1].upper().startswith(b"DATA"):
            line = await reader.readline()
            if not line:
                return False
            group.append(line.rstrip(b"\r\n"))
        self.groups.append(group)
        return await self._answer(group, reader, writer)

    async def _answer(self, group: list[bytes], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        if self.hang:
            self.hang -= 1
            await reader.read()  # until the client gives up and closes
            return False
        if self.drop:
            self.drop -= 1
            return False
        if self.garble:
            writer.write(b"this is no reply\r\n")
            return True
        rcpts = [self.rcpt_replies.get(c[9:-1], b"250 2.1.5 ok") for c in group[1:-1]]
        replies = b"".join(r + b"\r\n" for r in (self.mail_reply, *rcpts, self.data_reply))
        for piece in (replies[i:i + 1] for i in range(len(replies))) if self.split else [replies]:
            writer.write(piece)
            await writer.drain()
        if self.data_reply.startswith(b"354"):
            lines = []
            while (line := await reader.readline()) != b".\r\n":
                if not line:
                    return False
                lines.append(line)
            self.bodies.append(b"".join(lines))
            # A lone dot ends a DATA the client has no use for (RFC 2920): nobody to send to.
            writer.write(b"250 2.0.0 queued\r\n" if lines else b"554 5.5.1 no valid recipients\r\n")
        return True


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    s = ScriptedUpstream()
    await s.start()
    yield s
    assert s.server is not None
    s.server.close()


@pytest.fixture
async def upstream(scripted: ScriptedUpstream) -> AsyncIterator[SmtpUpstream]:
    up = SmtpUpstream(UpstreamSettings(host="127.0.0.1", port=scripted.port, tls="none", timeout=2))
    yield up
    await up.close()


async def send(upstream: SmtpUpstream, rcpts: tuple[str, ...] = RCPTS) -> dict[str, tuple[int, str]]:
    return await upstream.send(Envelope("sender@gp.nhs.net", rcpts), BODY, queue_id="q1")


async def test_a_transaction_is_one_group_and_the_connection_is_reused(scripted: ScriptedUpstream,
                                                                       upstream: SmtpUpstream) -> None:
    """MAIL, every RCPT and DATA arrive before the upstream says anything: one round trip for
    the envelope, whatever the number of recipients (the scripted upstream answers nothing
    until DATA, so a client waiting for each reply would time out instead)."""
    assert await send(upstream) == dict.fromkeys(RCPTS, (250, "ok"))
    assert await send(upstream, RCPTS[:1]) == {RCPTS[0]: (250, "ok")}
    assert scripted.groups == [
        [b"MAIL FROM:<sender@gp.nhs.net>", *(b"RCPT TO:<%s>" % r.encode() for r in RCPTS), b"DATA"],
        [b"MAIL FROM:<sender@gp.nhs.net>", b"RCPT TO:<a@nhs.net>", b"DATA"],
    ]
    assert scripted.bodies == [BODY.replace(b"\n.", b"\n..")] * 2
    assert scripted.connections == 1


async def test_replies_in_pieces_are_put_together(scripted: ScriptedUpstream, upstream: SmtpUpstream) -> None:
    scripted.split = True
    scripted.rcpt_replies = {b"b@nhs.net": b"550-5.1.1 no such user\r\n550 5.1.1 try another"}
    results = await send(upstream)
    assert results["b@nhs.net"] == (550, "5.1.1 no such user\n5.1.1 try another")
    assert results["a@nhs.net"] == results["c@nhs.net"] == (250, "ok")
    assert len(scripted.bodies) == 1


async def test_every_recipient_refused_but_data_taken_ends_with_a_lone_dot(scripted: ScriptedUpstream,
                                                                           upstream: SmtpUpstream) -> None:
    """A non-compliant upstream says 354 to a DATA whose every recipient it refused: the client
    sends a lone dot, never the message, and the connection stays in step for the next one."""
    scripted.rcpt_replies = {r.encode(): b"550 5.1.1 no such user" for r in RCPTS}
    results = await send(upstream)
    assert {code for code, _ in results.values()} == {550}
    assert scripted.bodies == [b""]
    assert scripted.others[-1] == b"RSET"
    scripted.rcpt_replies = {}
    assert await send(upstream) == dict.fromkeys(RCPTS, (250, "ok"))
    assert scripted.connections == 1


@pytest.mark.parametrize(("mail_reply", "permanent"), [(b"550 5.7.1 sender refused", True),
                                                       (b"452 4.3.1 try later", False)])
async def test_a_refused_sender_is_reported_and_a_taken_data_ended(scripted: ScriptedUpstream,
                                                                   upstream: SmtpUpstream, mail_reply: bytes,
                                                                   permanent: bool) -> None:
    scripted.mail_reply = mail_reply
    with pytest.raises(DeliveryError) as caught:
        await send(upstream)
    assert caught.value.code == int(mail_reply[:3]) and caught.value.permanent is permanent
    assert scripted.bodies == [b""]
    scripted.mail_reply = b"250 ok"
    assert await send(upstream) == dict.fromkeys(RCPTS, (250, "ok"))


async def test_a_refused_data_is_reported(scripted: ScriptedUpstream, upstream: SmtpUpstream) -> None:
    scripted.data_reply = b"451 4.3.0 not now"
    with pytest.raises(DeliveryError) as caught:
        await send(upstream)
    assert caught.value.code == 451 and not caught.value.permanent
    assert scripted.bodies == []


async def test_421_in_a_group_closes_the_connection(scripted: ScriptedUpstream,
                                                    upstream: SmtpUpstream) -> None:
    """421: the upstream is going away. Deferred, and the next message opens a new connection."""
    scripted.mail_reply = b"421 4.3.2 shutting down"
    with pytest.raises(DeliveryError) as caught:
        await send(upstream)
    assert caught.value.code == 421 and not caught.value.permanent
    await asyncio.wait_for(scripted.closed.wait(), 5)
    scripted.mail_reply = b"250 ok"
    assert await send(upstream) == dict.fromkeys(RCPTS, (250, "ok"))
    assert scripted.connections == 2


async def test_an_upstream_that_never_answers_times_out_and_is_let_go(scripted: ScriptedUpstream,
                                                                      upstream: SmtpUpstream) -> None:
    scripted.hang = 1
    with pytest.raises(DeliveryError, match="Timed out waiting for server response"):
        await send(upstream)
    await asyncio.wait_for(scripted.closed.wait(), 5)  # out of step: closed, not reused
    assert await send(upstream) == dict.fromkeys(RCPTS, (250, "ok"))
    assert scripted.connections == 2


@pytest.mark.parametrize(("drops", "delivered"), [(1, True), (2, False)])
async def test_a_connection_dropped_in_a_group_is_tried_once_more(scripted: ScriptedUpstream,
                                                                  upstream: SmtpUpstream, drops: int,
                                                                  delivered: bool) -> None:
    """As for any reused connection the upstream closed: one fresh try, then deferred."""
    scripted.drop = drops
    if delivered:
        assert await send(upstream) == dict.fromkeys(RCPTS, (250, "ok"))
    else:
        with pytest.raises(DeliveryError, match="disconnected") as caught:
            await send(upstream)
        assert not caught.value.permanent
    assert scripted.connections == 2


async def test_a_reply_that_is_no_smtp_is_an_error_not_a_hang(scripted: ScriptedUpstream,
                                                              upstream: SmtpUpstream) -> None:
    """Which reply answers what is then unknown: the connection is closed, not reused."""
    scripted.garble = True
    with pytest.raises(DeliveryError, match="Malformed"):
        await send(upstream)
    await asyncio.wait_for(scripted.closed.wait(), 5)
    scripted.garble = False
    assert await send(upstream) == dict.fromkeys(RCPTS, (250, "ok"))
    assert scripted.connections == 2


async def test_five_hundred_recipients_in_one_group_to_a_real_smtp_server(sink: Sink) -> None:
    """A practice's mailing to 500 patients, against aiosmtpd (which offers PIPELINING here and
    reads one command at a time): every reply is matched to its recipient, a refusal in the
    middle included, and the message goes once to the other 499."""
    rcpts = tuple(f"patient{i}@example.org" for i in range(500))
    sink.refuse = {rcpts[250]: "550 5.1.1 no such user"}
    up = SmtpUpstream(UpstreamSettings(host=sink.host, port=sink.port, tls="none", timeout=5))
    try:
        results = await send(up, rcpts)
    finally:
        await up.close()
    assert results.pop(rcpts[250]) == (550, "5.1.1 no such user")
    assert set(results.values()) == {(250, "ok")} and len(results) == 499
    [got] = await sink.wait_for(1)
    assert got.rcpt_tos == [r for r in rcpts if r != rcpts[250]]


async def test_a_control_character_in_a_group_is_refused_before_anything_is_sent(
        scripted: ScriptedUpstream, upstream: SmtpUpstream) -> None:
    """The group's own check, as aiosmtplib's execute_command() makes it (SmtpUpstream.send()
    refuses such addresses before they get here)."""
    assert await send(upstream, RCPTS[:1]) == {RCPTS[0]: (250, "ok")}
    client = upstream._client
    assert client is not None and isinstance(client.protocol, PipeliningProtocol)
    smuggled = b"RCPT TO:<a@nhs.net>\r\nRCPT TO:<b@nhs.net>"
    for bad in (smuggled, b"RCPT TO:<a\x00@nhs.net>", b"RCPT TO:<a\x7f@nhs.net>"):
        with pytest.raises(ValueError, match="prohibited control character"):
            await client.protocol.group([b"MAIL FROM:<>", bad, b"DATA"], reply_timeout=2)
    assert len(scripted.groups) == 1
    assert await send(upstream, RCPTS[:1]) == {RCPTS[0]: (250, "ok")}  # still in step
