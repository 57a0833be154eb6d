"""The relay core over real SMTP: a live relay in-process, a recording aiosmtpd upstream."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest
from structlog.testing import capture_logs

from relayguard import devcert
from relayguard.auth import hash_password
from relayguard.store import State, Store, StoredMessage
from tests.conftest import ROOT, Sink

PLAIN = (b"From: Reception <reception@oakfield-surgery.nhs.uk>\r\nTo: ward7.admin@nhs.net\r\n"
         b"Subject: Clinic times\r\nMessage-ID: <t1@oakfield-surgery.nhs.uk>\r\n\r\n"
         b"The clinic moves to Thursday.\r\n")
FROM, TO = "reception@oakfield-surgery.nhs.uk", ["ward7.admin@nhs.net"]


async def send(port: int, raw: bytes = PLAIN, *, mail_from: str = FROM, rcpts: list[str] | None = None,
               **kwargs: object) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="client.test",
                             **kwargs)  # type: ignore[arg-type]
    async with client:
        _, reply = await client.sendmail(mail_from, rcpts or TO, raw)
    return 250, reply


async def wait_until(store: Store, queue_id: str, done: Callable[[StoredMessage], bool],
                     timeout: float = 15) -> StoredMessage:
    """The stored message once ``done`` holds for it (polled; fails after ``timeout``)."""
    for _ in range(int(timeout / 0.05)):
        stored = await store.get(queue_id)
        if done(stored):
            return stored
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue_id} never reached the expected state: {stored}")


async def test_accepted_message_arrives_intact(relay_factory, sink: Sink) -> None:
    """A message the relay accepts reaches the upstream with its envelope and bytes unchanged."""
    relay = await relay_factory()
    _, reply = await send(relay.smtp_port)
    assert "queued as" in reply
    [got] = await sink.wait_for(1)
    assert got.mail_from == FROM and got.rcpt_tos == TO
    assert got.raw == PLAIN


async def test_reply_carries_the_queue_id_of_a_committed_row(relay_factory, sink: Sink) -> None:
    """The 250 reply names a queue id that is already in the store."""
    relay = await relay_factory()
    _, reply = await send(relay.smtp_port)
    queue_id = reply.rsplit(" ", 1)[-1]
    stored = await relay.store.get(queue_id)
    assert stored.envelope.rcpt_tos == tuple(TO) and stored.raw == PLAIN
    assert stored.submitter.name == FROM  # trusted network: the envelope sender submits


async def test_upstream_4xx_is_retried_until_it_succeeds(relay_factory, sink: Sink) -> None:
    """A temporary upstream failure defers the message and a later attempt delivers it."""
    sink.replies = ["451 4.3.0 try later", "451 4.3.0 try later"]
    relay = await relay_factory()
    _, reply = await send(relay.smtp_port)
    await sink.wait_for(1)
    stored = await wait_until(relay.store, reply.rsplit(" ", 1)[-1], lambda m: m.state is State.DELIVERED)
    assert stored.attempts == 3


async def test_upstream_5xx_bounces_with_a_dsn(relay_factory, sink: Sink) -> None:
    """A permanent upstream refusal marks the message bounced and sends a DSN to the sender."""
    sink.refuse = {"gone@nhs.net": "550 5.1.1 no such user"}
    relay = await relay_factory()
    _, reply = await send(relay.smtp_port, rcpts=["gone@nhs.net"])
    [dsn] = await sink.wait_for(1)
    assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == [FROM]
    assert b"multipart/report" in dsn.raw and b"report-type=delivery-status" in dsn.raw
    assert b"Final-Recipient: rfc822; gone@nhs.net" in dsn.raw
    assert b"The clinic moves" not in dsn.raw  # headers only: a bounce never carries the body
    stored = await relay.store.get(reply.rsplit(" ", 1)[-1])
    assert stored.state is State.BOUNCED
    assert stored.results["gone@nhs.net"]["code"] == 550


async def test_partial_refusal_delivers_the_rest_and_bounces_one(relay_factory, sink: Sink) -> None:
    """Per-recipient results: one refused recipient is bounced, the others are delivered."""
    sink.refuse = {"gone@nhs.net": "550 5.1.1 no such user"}
    relay = await relay_factory()
    await send(relay.smtp_port, rcpts=["ward7.admin@nhs.net", "gone@nhs.net"])
    got = await sink.wait_for(2)
    delivered = [g for g in got if g.mail_from == FROM]
    assert delivered[0].rcpt_tos == ["ward7.admin@nhs.net"]
    assert any(g.mail_from in ("", "<>") and g.rcpt_tos == [FROM] for g in got)


async def test_upstream_down_then_back(relay_factory, sink: Sink) -> None:
    """Mail accepted while the upstream is down is delivered once it comes back."""
    port = sink.port
    await sink.stop()
    relay = await relay_factory()
    _, reply = await send(relay.smtp_port)
    stored = await wait_until(relay.store, reply.rsplit(" ", 1)[-1], lambda m: m.attempts >= 1)
    assert stored.state is State.QUEUED
    assert stored.attempts >= 1 and "unreachable" in (stored.last_error or "")
    sink.port = port
    await sink.start()
    [got] = await sink.wait_for(1)
    assert got.raw == PLAIN


async def test_max_age_bounces_deferred_mail(relay_factory, sink: Sink, clock) -> None:
    """Mail still deferred at the maximum age is bounced with a DSN instead of retried forever."""
    sink.replies = ["451 4.3.0 later"]
    relay = await relay_factory(clock=clock, delivery={"max_age": 3600, "retry_base": 1, "retry_max": 1})
    await send(relay.smtp_port)
    await asyncio.sleep(0.2)  # first attempt deferred
    clock.advance(7200)
    sink.replies = ["451 4.3.0 still later"]
    [dsn] = await sink.wait_for(1)
    assert dsn.mail_from in ("", "<>") and b"gave up after" in dsn.raw


async def test_untrusted_client_without_auth_is_refused(relay_factory, sink: Sink) -> None:
    """A client outside the trusted networks may not send without AUTH: never an open relay."""
    relay = await relay_factory(smtp={"trusted_networks": []})
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as err:
        await send(relay.smtp_port)
    assert err.value.code == 530
    await asyncio.sleep(0.1)
    assert sink.got == []


async def test_relay_attempt_from_outside_is_refused_at_rcpt(relay_factory, sink: Sink) -> None:
    """Even past MAIL, an unauthenticated outside client gets 554 for every recipient."""
    relay = await relay_factory(smtp={"trusted_networks": []})
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, start_tls=False)
    async with client:
        await client.ehlo()
        code, _ = await client.execute_command(b"RCPT", b"TO:<victim@example.org>")
        assert code in (503, 554)  # 503: no MAIL yet; either way nothing is relayed
        with pytest.raises(aiosmtplib.SMTPSenderRefused):
            await client.mail(FROM)


async def test_auth_before_starttls_is_refused(relay_factory, sink: Sink, tmp_path: Path) -> None:
    """AUTH is neither offered nor accepted on a connection without TLS."""
    devcert.make(tmp_path / "c.pem", tmp_path / "k.pem")
    relay = await relay_factory(smtp={"trusted_networks": [], "tls_cert": str(tmp_path / "c.pem"),
                                      "tls_key": str(tmp_path / "k.pem")})
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, start_tls=False)
    async with client:
        await client.ehlo()
        assert "auth" not in client.esmtp_extensions
        token = base64.b64encode(b"\0alice\0correct horse").decode()
        code, _ = await client.execute_command(b"AUTH", b"PLAIN", token.encode())
        assert code == 538


async def test_auth_after_starttls_lets_a_user_send(relay_factory, sink: Sink, tmp_path: Path) -> None:
    """After STARTTLS a local account authenticates and becomes the message's submitter."""
    devcert.make(tmp_path / "c.pem", tmp_path / "k.pem")
    relay = await relay_factory(smtp={"trusted_networks": [], "tls_cert": str(tmp_path / "c.pem"),
                                      "tls_key": str(tmp_path / "k.pem")})
    await relay.store.add_user(name="alice", password_hash=hash_password("correct horse"), role="sender")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, start_tls=True, tls_context=ctx)
    async with client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.login("alice", "wrong password")
        await client.login("alice", "correct horse")
        _, reply = await client.sendmail(FROM, TO, PLAIN)
    stored = await relay.store.get(reply.rsplit(" ", 1)[-1])
    assert stored.submitter.name == "alice" and stored.submitter.kind.value == "user"
    await sink.wait_for(1)


async def test_oversize_message_gets_552(relay_factory, sink: Sink) -> None:
    """A message over the configured SIZE limit is refused with 552 and not stored."""
    relay = await relay_factory(smtp={"max_message_size": 2000})
    big = PLAIN + b"x" * 70 + b"\r\n" + (b"y" * 76 + b"\r\n") * 40
    with pytest.raises(aiosmtplib.SMTPResponseException) as err:
        await send(relay.smtp_port, big)
    assert err.value.code == 552
    assert await relay.store.list_messages() == []


async def test_too_many_recipients_get_452(relay_factory, sink: Sink) -> None:
    """Recipients past the per-message limit get 452, so the client sends them separately."""
    relay = await relay_factory(smtp={"max_recipients": 2})
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, start_tls=False)
    async with client:
        await client.ehlo()
        await client.mail(FROM)
        await client.rcpt("a@nhs.net")
        await client.rcpt("b@nhs.net")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as err:
            await client.rcpt("c@nhs.net")
    assert err.value.code == 452


async def test_decision_log_names_ids_not_content(relay_factory, sink: Sink) -> None:
    """Each transaction logs one structured event with ids and counts, never the body."""
    relay = await relay_factory()
    with capture_logs() as logs:
        _, reply = await send(relay.smtp_port)
        await sink.wait_for(1)
        await asyncio.sleep(0.1)
    [tx] = [e for e in logs if e["event"] == "smtp.transaction"]
    assert tx["queue_id"] == reply.rsplit(" ", 1)[-1]
    assert tx["message_id"] == "<t1@oakfield-surgery.nhs.uk>"
    assert tx["action"] == "deliver" and tx["rcpt_count"] == 1 and tx["rcpt_domains"] == ["nhs.net"]
    attempts = [e for e in logs if e["event"] == "delivery.attempt"]
    assert attempts and attempts[0]["outcome"] == "delivered"
    assert "clinic" not in repr(logs).lower()


def test_bad_settings_file_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    """A settings file with a wrong value is reported in one line naming the key, exit 2."""
    cfg = tmp_path / "relayguard.yaml"
    cfg.write_text("smtp:\n  max_recipients: lots\n")
    run = subprocess.run([str(ROOT / ".venv/bin/relayguard"), "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "smtp.max_recipients" in lines[0] and "Traceback" not in run.stderr


def test_missing_settings_file_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    """A settings file that does not exist is one clear line and exit 2."""
    run = subprocess.run([str(ROOT / ".venv/bin/relayguard"), "serve", "--config", str(tmp_path / "no.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "cannot read settings file" in run.stderr


def _dotted_message(repeats: int) -> bytes:
    lines = [b"From: reception@oakfield-surgery.nhs.uk", b"To: ward7.admin@nhs.net", b"Subject: scans", b""]
    lines += [b".leading dot", b".", b"..two dots", b"plain"] * repeats  # dots the upstream must see as sent
    return b"\r\n".join(lines) + b"\r\n"


# A few bytes; past the 256 KiB read chunk; past 1 MiB (scanned via a spool file, sent upstream
# in paced slices: upstream.WRITE_SLICE).
@pytest.mark.parametrize("repeats", [1, 20_000, 80_000])
async def test_dotted_message_arrives_byte_identical(relay_factory, sink: Sink, repeats: int) -> None:
    """Our own dot-stuffing: dot-leading and lone-dot lines reach the upstream as sent, and a
    refused recipient is still reported."""
    sink.refuse = {"gone@nhs.net": "550 5.1.1 no such user"}
    raw = _dotted_message(repeats)
    relay = await relay_factory()
    _, reply = await send(relay.smtp_port, raw, rcpts=["ward7.admin@nhs.net", "gone@nhs.net"])
    got = await sink.wait_for(2)
    [copy] = [g for g in got if g.mail_from == FROM]
    assert copy.raw == raw and copy.rcpt_tos == ["ward7.admin@nhs.net"]
    stored = await wait_until(relay.store, reply.rsplit(" ", 1)[-1], lambda m: m.state is State.DELIVERED)
    assert stored.results["gone@nhs.net"]["code"] == 550
