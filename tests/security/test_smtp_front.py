"""The SMTP front under hostile clients: smuggling, STARTTLS injection, relay tricks, abuse limits."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from relayguard import devcert
from relayguard.auth import hash_password
from relayguard.policy import engine
from relayguard.smtp import handler
from relayguard.smtp import server as smtp_server
from relayguard.store import State
from tests.conftest import Sink
from tests.security.rawsmtp import DecideRecorder, RawSmtp

FROM = b"reception@oakfield-surgery.nhs.uk"
TO = b"ward7.admin@nhs.net"
HEAD = b"From: <reception@oakfield-surgery.nhs.uk>\r\nTo: <ward7.admin@nhs.net>\r\nSubject: one\r\n\r\n"
SMUGGLED = (b"MAIL FROM:<reception@oakfield-surgery.nhs.uk>\r\nRCPT TO:<victim@gmail.com>\r\nDATA\r\n"
            b"From: <reception@oakfield-surgery.nhs.uk>\r\nSubject: smuggled\r\n\r\nsecond\r\n")
# The end-of-data look-alikes of the December 2023 disclosure (SEC Consult; Postfix, Sendmail,
# Exim, Cisco): each is an end of DATA to some server, none of them to RFC 5321.
VECTORS = {
    "lf.lf": b"\n.\n", "lf.crlf": b"\n.\r\n", "crlf.lf": b"\r\n.\n", "cr.cr": b"\r.\r",
    "cr.crlf": b"\r.\r\n", "crlf.cr": b"\r\n.\r", "lf.cr": b"\n.\r", "cr.lf": b"\r.\n",
    "crlf.nul-crlf": b"\r\n.\x00\r\n", "bare-lf-lines": b"\nline\n", "bare-cr-lines": b"\rline\r",
}
BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def tls_files(tmp_path: Path) -> dict[str, str]:
    devcert.make(tmp_path / "c.pem", tmp_path / "k.pem")
    return {"tls_cert": str(tmp_path / "c.pem"), "tls_key": str(tmp_path / "k.pem")}


async def queue_id_of(reply: str) -> str:
    return reply.rsplit(" ", 1)[-1]


@pytest.mark.parametrize("vector", VECTORS.values(), ids=VECTORS.keys())
async def test_smuggling_vector_yields_exactly_one_message_as_the_policy_saw_it(
        relay_factory, sink: Sink, monkeypatch: pytest.MonkeyPatch, vector: bytes) -> None:
    """A fake end of data plus a second transaction inside DATA gives the upstream one message,
    byte for byte the one the policy judged and the store kept, with no bare CR or LF left in it."""
    recorder = DecideRecorder()
    monkeypatch.setattr(engine, "decide", recorder)
    relay = await relay_factory()
    async with RawSmtp(relay.smtp_port) as c:
        await c.envelope(FROM, TO)
        assert (await c.cmd(b"DATA")).startswith("354")
        await c.write(HEAD + b"first" + vector + SMUGGLED + b".\r\nQUIT\r\n")
        replies = await c.replies()
    assert [r[:3] for r in replies] == ["250", "221"], replies  # one message; no MAIL/RCPT/DATA replies
    [got] = await sink.wait_for(1)
    await asyncio.sleep(0.3)  # a second message, if any, would have arrived by now
    assert len(sink.got) == 1 and got.rcpt_tos == [TO.decode()]
    stored = await relay.store.get(await queue_id_of(replies[0]))
    assert recorder.seen == [stored.raw] and got.raw == stored.raw
    assert not BARE.search(got.raw) and b"smuggled" in got.raw  # the "second" message is body text


@pytest.mark.parametrize("size", [handler._INLINE_CRLF_BYTES // 2, handler._INLINE_CRLF_BYTES + 65536],
                         ids=["checked-in-the-loop", "checked-in-a-thread"])
async def test_bare_line_ends_are_made_crlf_in_a_message_of_any_size(relay_factory, sink: Sink,
                                                                     size: int) -> None:
    relay = await relay_factory()
    line = b"x" * 30
    # DATA lines end in CRLF (or are too long); each of these also holds a bare CR and a bare LF.
    body = (line + b"\r" + line + b"\n" + line + b"\r\n") * (size // (3 * len(line) + 4))
    async with RawSmtp(relay.smtp_port) as c:
        await c.envelope(FROM, TO)
        assert (await c.cmd(b"DATA")).startswith("354")
        await c.write(HEAD + body + b"\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in await c.replies()] == ["250", "221"]
    [got] = await sink.wait_for(1)
    assert not BARE.search(got.raw)
    assert got.raw.count(line) == body.count(line) and len(got.raw) > size


async def tls_session(c: RawSmtp) -> None:
    """Greeting, EHLO, STARTTLS and EHLO again: a session ready for AUTH."""
    assert (await c.reply()).startswith("220")
    await c.cmd(b"EHLO client.test")
    await c.cmd(b"STARTTLS")
    await c.starttls()
    await c.cmd(b"EHLO client.test")


async def test_commands_pipelined_behind_starttls_are_discarded(relay_factory, sink: Sink,
                                                                tmp_path: Path) -> None:
    """A MAIL sent in the same packet as STARTTLS (plaintext injection) is not executed after TLS."""
    relay = await relay_factory(smtp=tls_files(tmp_path))
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        assert "STARTTLS" in await c.cmd(b"EHLO client.test")
        await c.write(b"STARTTLS\r\nMAIL FROM:<injected@oakfield-surgery.nhs.uk>\r\n")
        assert (await c.reply()).startswith("220")
        await c.starttls()
        assert (await c.cmd(b"EHLO client.test")).startswith("250")
        reply = await c.cmd(b"RCPT TO:<ward7.admin@nhs.net>")
    assert reply.startswith("503"), reply  # no MAIL in force: the injected one was thrown away


async def test_untrusted_client_without_auth_cannot_relay_by_any_path(relay_factory, sink: Sink) -> None:
    """Outside the trusted networks, MAIL, RCPT and DATA without AUTH are all refused; nothing is stored."""
    relay = await relay_factory(smtp={"trusted_networks": ["192.0.2.0/24"]})
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        await c.cmd(b"EHLO client.test")
        assert (await c.cmd(b"MAIL FROM:<" + FROM + b">")).startswith("530")
        assert (await c.cmd(b"RCPT TO:<" + TO + b">"))[:1] == "5"
        assert (await c.cmd(b"DATA"))[:1] == "5"
    assert await relay.store.list_messages() == []


@pytest.mark.parametrize(("path", "why"), [
    (b"<@relay.example:victim@gmail.com>", "source route"),
    (b"<@a.example,@b.example:victim@gmail.com>", "source route"),
    (b"<victim%gmail.com@nhs.net>", "percent-hack"),
    (b"<\"victim@gmail.com\"@nhs.net>", "quoted"),
    (b"<\"odd user\"@nhs.net>", "quoted"),
    (b"<victim@[192.0.2.7]>", "IP-literal"),
    (b"<victim@[IPv6:2001:db8::1]>", "source route"),  # its ':' reads as a route, refused all the same
    (b"<gmail.com!victim@nhs.net>", "bang-path"),
])
async def test_routing_tricks_in_the_envelope_are_refused(relay_factory, sink: Sink, path: bytes,
                                                         why: str) -> None:
    """Source routes, the percent hack, quoted local parts and IP literals get 553 at RCPT and at MAIL."""
    relay = await relay_factory()
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        await c.cmd(b"EHLO client.test")
        sender = await c.cmd(b"MAIL FROM:" + path)
        await c.cmd(b"RSET")
        await c.cmd(b"MAIL FROM:<" + FROM + b">")
        rcpt = await c.cmd(b"RCPT TO:" + path)
    assert sender.startswith("553") and rcpt.startswith("553"), (sender, rcpt)
    assert why in rcpt


async def test_sessions_over_the_per_address_limit_get_421(relay_factory, sink: Sink) -> None:
    """A third session from one address, with two allowed, hears 421 and is closed; a slot frees on QUIT."""
    relay = await relay_factory(smtp={"max_sessions_per_ip": 2})
    async with RawSmtp(relay.smtp_port) as a, RawSmtp(relay.smtp_port) as b:
        assert (await a.reply()).startswith("220") and (await b.reply()).startswith("220")
        async with RawSmtp(relay.smtp_port) as third:
            assert (await third.reply()).startswith("421")
            assert await third.reply() == ""  # closed
        await a.cmd(b"QUIT")
        await asyncio.sleep(0.1)
        async with RawSmtp(relay.smtp_port) as again:
            assert (await again.reply()).startswith("220")


async def test_silent_client_is_dropped_after_the_timeout(relay_factory, sink: Sink) -> None:
    """A client that goes quiet mid-command (slowloris) is disconnected after smtp.timeout seconds."""
    relay = await relay_factory(smtp={"timeout": 0.5})
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        await c.write(b"EHLO slow")  # half a command, never finished
        started = time.monotonic()
        replies = await c.replies(timeout=5)  # returns when the relay closes the connection
        assert c.reader is not None and c.reader.at_eof()
    assert time.monotonic() - started < 3 and replies == []


async def test_a_client_that_keeps_talking_is_not_dropped_and_is_once_it_stops(relay_factory,
                                                                              sink: Sink) -> None:
    """Every command moves the idle deadline on (RelaySMTP keeps one timer, which waits again
    when it finds the deadline moved): a client talking for four timeouts stays connected, and
    is dropped about one timeout after its last command."""
    relay = await relay_factory(smtp={"timeout": 0.5})
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        for _ in range(8):  # 2 s in all
            assert (await c.cmd(b"NOOP")).startswith("250")
            await asyncio.sleep(0.25)
        assert (await c.cmd(b"NOOP")).startswith("250")  # still connected
        last = time.monotonic()
        replies = await c.replies(timeout=5)  # returns when the relay closes the connection
        assert c.reader is not None and c.reader.at_eof()
    assert replies == []
    assert 0.4 < time.monotonic() - last < 2


async def test_overlong_command_and_data_lines_are_refused(relay_factory, sink: Sink) -> None:
    """A command line over 512 octets gets 500; a DATA line over 998 gets 500 and nothing is stored."""
    relay = await relay_factory()
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        assert (await c.cmd(b"EHLO " + b"x" * 600)).startswith("500")
        await c.cmd(b"EHLO client.test")
        await c.cmd(b"MAIL FROM:<" + FROM + b">")
        await c.cmd(b"RCPT TO:<" + TO + b">")
        await c.cmd(b"DATA")
        data = await c.cmd(HEAD + b"y" * 5000 + b"\r\n.")
    assert data.startswith("500"), data
    assert await relay.store.list_messages() == []


async def test_huge_header_block_is_held(relay_factory, sink: Sink) -> None:
    """A header block over scan.max_header_bytes (Postfix's header_size_limit) is held, not delivered."""
    relay = await relay_factory(scan={"max_header_bytes": 64 * 1024})
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 900) for i in range(100))
    async with RawSmtp(relay.smtp_port) as c:
        await c.envelope(FROM, TO)
        await c.cmd(b"DATA")
        reply = await c.cmd(padding + HEAD + b"body\r\n.")
    assert "held for review" in reply, reply
    stored = await relay.store.get(await queue_id_of(reply))
    assert stored.state is State.HELD
    assert any(f.kind == "header_defect" for f in stored.decision.findings)


async def test_smtputf8_and_8bitmime_are_handled_cleanly(relay_factory, sink: Sink) -> None:
    """A UTF-8 address is refused without SMTPUTF8 and accepted with it; an 8-bit body arrives intact."""
    relay = await relay_factory()
    body = HEAD + "Grüße aus der Praxis\r\n".encode()
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        ehlo = await c.cmd(b"EHLO client.test")
        assert "SMTPUTF8" in ehlo and "8BITMIME" in ehlo
        assert (await c.cmd(b"MAIL FROM:<" + FROM + b">")).startswith("250")
        assert (await c.cmd("RCPT TO:<jürgen@nhs.net>".encode())).startswith("553")
        await c.cmd(b"RSET")
        utf8_sender = "MAIL FROM:<rézeption@oakfield-surgery.nhs.uk> SMTPUTF8".encode()
        assert (await c.cmd(utf8_sender)).startswith("250")
        assert (await c.cmd("RCPT TO:<jürgen@nhs.net>".encode())).startswith("250")
        await c.cmd(b"RSET")
        assert (await c.cmd(b"MAIL FROM:<" + FROM + b"> BODY=8BITMIME")).startswith("250")
        assert (await c.cmd(b"RCPT TO:<" + TO + b">")).startswith("250")
        await c.cmd(b"DATA")
        assert (await c.cmd(body + b".")).startswith("250")
    [got] = await sink.wait_for(1)
    assert got.raw == body


async def test_null_sender_is_accepted_and_its_bounce_is_never_bounced(relay_factory, sink: Sink) -> None:
    """MAIL FROM:<> is accepted; when the upstream refuses it permanently no DSN is generated."""
    sink.refuse = {"gone@nhs.net": "550 5.1.1 no such user"}
    relay = await relay_factory()
    async with RawSmtp(relay.smtp_port) as c:
        assert (await c.reply()).startswith("220")
        await c.cmd(b"EHLO client.test")
        assert (await c.cmd(b"MAIL FROM:<>")).startswith("250")
        assert (await c.cmd(b"RCPT TO:<gone@nhs.net>")).startswith("250")
        await c.cmd(b"DATA")
        reply = await c.cmd(HEAD + b"a bounce\r\n.")
    queue_id = await queue_id_of(reply)
    for _ in range(100):
        if (stored := await relay.store.get(queue_id)).state is State.BOUNCED:
            break
        await asyncio.sleep(0.05)
    assert stored.state is State.BOUNCED and stored.envelope.mail_from == ""
    await asyncio.sleep(0.5)
    assert sink.got == []  # no DSN reached the upstream
    assert [m.id for m in await relay.store.list_messages()] == [queue_id]  # and none was queued


async def test_exception_in_the_handler_answers_451_without_leaking(relay_factory, sink: Sink,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """decide() raising gives 451 4.3.0 (aiosmtpd's default is 500 with the text); nothing is stored."""
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("943 476 5919 secret detail")

    monkeypatch.setattr(engine, "decide", explode)
    relay = await relay_factory()
    with capture_logs() as logs:
        async with RawSmtp(relay.smtp_port) as c:
            await c.envelope(FROM, TO)
            await c.cmd(b"DATA")
            reply = await c.cmd(HEAD + b"body\r\n.")
            after = await c.cmd(b"NOOP")
    assert reply.startswith("451 4.3.0") and "secret" not in reply and "943" not in reply
    assert after.startswith("250")  # the session survives
    assert await relay.store.list_messages() == []
    [event] = [e for e in logs if e["event"] == "smtp.exception"]
    assert event["error_type"] == "RuntimeError" and "943" not in repr(event)


async def test_auth_brute_force_backs_off_then_locks_the_account(relay_factory, sink: Sink,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed AUTHs from one address wait longer each time; after 5 the right password is refused too."""
    monkeypatch.setattr(smtp_server, "AUTH_BACKOFF_BASE", 0.05)
    relay = await relay_factory(smtp={"trusted_networks": [], **tls_files(tmp_path)})
    await relay.store.add_user(name="alice", password_hash=hash_password("correct horse"), role="sender")
    waits: list[float] = []
    import base64  # noqa: PLC0415

    def plain(password: str) -> bytes:
        return b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + password.encode())

    with capture_logs() as logs:
        async with RawSmtp(relay.smtp_port) as c:
            await tls_session(c)
            for guess in range(4):
                started = time.monotonic()
                assert (await c.cmd(plain(f"guess number {guess}"))).startswith("535")
                waits.append(time.monotonic() - started)
    assert [e["backoff_s"] for e in logs if e["event"] == "smtp.auth_failed"] == [0.05, 0.1, 0.2, 0.4]
    assert waits[3] >= 0.4  # the back-off is really waited out (argon2 time comes on top)
    async with RawSmtp(relay.smtp_port) as c:  # a new session: aiosmtpd allows 5 AUTHs per session
        await tls_session(c)
        assert (await c.cmd(plain("guess number 4"))).startswith("535")
        assert (await c.cmd(plain("correct horse"))).startswith("535")  # locked
    user = await relay.store.get_user("alice")
    assert user is not None and user.locked_until is not None


async def test_smtp_auth_failure_is_audited(relay_factory, sink: Sink, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed SMTP AUTH leaves a login_failed entry in the audit trail, as a web login failure does."""
    import base64  # noqa: PLC0415

    from relayguard import audit  # noqa: PLC0415

    monkeypatch.setattr(smtp_server, "AUTH_BACKOFF_BASE", 0.01)
    relay = await relay_factory(smtp={"trusted_networks": [], **tls_files(tmp_path)})
    await relay.store.add_user(name="alice", password_hash=hash_password("correct horse"), role="sender")
    async with RawSmtp(relay.smtp_port) as c:
        await tls_session(c)
        assert (await c.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong one"))).startswith("535")
    entries = await audit.entries(relay.store)
    assert any(e.action == "login_failed" for e in entries)
