"""The one outbound I/O boundary: hand a message to the upstream relay.

``SmtpUpstream`` speaks SMTP with aiosmtplib over a reused connection; ``CaptureUpstream`` keeps
mail in the store's capture mailbox (dev mode, no upstream configured). Foreign exceptions are
translated here into :class:`DeliveryError` carrying the upstream's code.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any, Protocol

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus

from relayguard import pipelining
from relayguard.config import UpstreamSettings, UpstreamTls
from relayguard.crlf import dot_stuffed, is_canonical
from relayguard.decision import Envelope
from relayguard.errors import DeliveryError
from relayguard.pipelining import PipeliningProtocol
from relayguard.store import Store

pipelining.install()  # every aiosmtplib client of this process can pipeline (pipelining.py)

# rcpt -> (code, reply text)
Results = dict[str, tuple[int, str]]

# Reject all C0 controls + DEL in envelope addresses: aiosmtplib would not send the CR/LF, but it
# quietly parses "a@b\r\nRCPT TO:<c@d>" down to "a@b", so the mail would go somewhere unjudged.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# A dot-atom addr-spec: sent as <address>, exactly what quote_address() makes of it, without its
# email.utils.parseaddr() (~10 us an address; profiled at 4 % of a 1 KiB message's CPU).
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


class Upstream(Protocol):
    async def send(self, envelope: Envelope, raw: bytes, *, queue_id: str) -> Results: ...

    async def close(self) -> None: ...


def _text(resp: object) -> str:
    return str(getattr(resp, "message", resp))[:300]


def _ours_to_encode(envelope: Envelope, raw: bytes) -> bool:
    """Whether DATA is encoded by us rather than by aiosmtplib's data(), which runs two regexes
    over the whole message on the event loop (~0.2 s for 30 MB, stalling every other session;
    10 % of the relay's CPU at 100 KiB). Ours needs canonical CRLF and an ASCII envelope (for
    SMTPUTF8 addresses aiosmtplib's sendmail() negotiates the extension)."""
    return envelope.mail_from.isascii() and all(r.isascii() for r in envelope.rcpt_tos) \
        and is_canonical(raw)


# A large message is written this much at a time, each slice once the transport has sent the
# last: asyncio keeps a copy of whatever the socket does not take at once, which for a 25 MiB
# message is most of it (25 MiB more in the relay while it is sent).
WRITE_SLICE = 1024 * 1024


async def _write_data(protocol: SMTPProtocol, pieces: list[bytes], *, drain_timeout: float) -> None:
    """Write ``pieces``, each over WRITE_SLICE in slices with a wait (at most ``drain_timeout``) for
    the transport to drain before the next. A small message is written without any await, so
    its reply cannot arrive before read_response() waits for it; a reply the upstream sends in
    the middle of a large one (it must not) goes unseen and read_response() times out."""
    for piece in pieces:
        if len(piece) <= WRITE_SLICE:
            protocol.write(piece)
            continue
        view = memoryview(piece)
        for start in range(0, len(piece), WRITE_SLICE):
            if start:
                # Not wait_for(): on 3.11 it loses a cancel that arrives as the drain completes,
                # and a sender stopped mid-message went on to its next one (shutdown hung).
                async with asyncio.timeout(drain_timeout):
                    await protocol._drain_helper()  # aiosmtplib's own
            protocol.write(view[start:start + WRITE_SLICE])  # type: ignore[arg-type]


def _quoted(address: str) -> bytes:
    """The address as MAIL and RCPT send it (``<>`` for the null sender)."""
    if not address or _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>".encode("ascii")
    return quote_address(address).encode("ascii")


_RCPT_OK = (SMTPStatus.completed, SMTPStatus.will_forward)


async def _transaction_replies(client: aiosmtplib.SMTP, envelope: Envelope, *,
                               reply_timeout: float) -> tuple[SMTPResponse, list[SMTPResponse],
                                                              SMTPResponse | None]:
    """The replies to MAIL, each RCPT and DATA. Pipelined (RFC 2920) when the upstream offers
    it: one write and one wait. Otherwise a round trip each, stopping where the upstream refused
    the sender or every recipient (DATA is then not sent: None)."""
    mail = b"MAIL FROM:" + _quoted(envelope.mail_from)
    rcpts = [b"RCPT TO:" + _quoted(r) for r in envelope.rcpt_tos]
    protocol = client.protocol
    if isinstance(protocol, PipeliningProtocol) and client.supports_extension("pipelining"):
        try:
            *replies, data = await protocol.group([mail, *rcpts, b"DATA"], reply_timeout=reply_timeout)
        except aiosmtplib.SMTPException:
            # Lost, timed out or garbled: which reply answers what is no longer known.
            client.close()
            raise
        if any(r.code == SMTPStatus.domain_unavailable for r in (*replies, data)):
            client.close()  # the upstream is going away (execute_command() closes on it too)
        return replies[0], replies[1:], data
    sent = await client.execute_command(b"MAIL", mail[5:])
    if sent.code != SMTPStatus.completed:
        return sent, [], None
    answers = [await client.execute_command(b"RCPT", r[5:]) for r in rcpts]
    if all(a.code not in _RCPT_OK for a in answers):
        return sent, answers, None
    return sent, answers, await client.execute_command(b"DATA")


async def _abandon(client: aiosmtplib.SMTP, data: SMTPResponse | None, *, reply_timeout: float) -> None:
    """A pipelined DATA the upstream took (354) though the sender or every recipient was
    refused: RFC 2920 says to end it with a lone dot, which the upstream then refuses."""
    if data is not None and data.code == SMTPStatus.start_input and client.protocol is not None:
        client.protocol.write(b".\r\n")
        await client.protocol.read_response(timeout=reply_timeout)


async def _sendmail_encoded(client: aiosmtplib.SMTP, envelope: Envelope, raw: bytes, *,
                            reply_timeout: float) -> dict[str, Any]:
    """aiosmtplib's sendmail() with our DATA encoding (two C-speed passes, no regex), our
    address quoting and pipelining; same results and exceptions: refused recipients returned,
    all refused raised. MAIL and RCPT are what client.mail() and client.rcpt() send."""
    await client._ehlo_or_helo_if_needed()  # what client.mail() does first
    sent, answers, start = await _transaction_replies(client, envelope, reply_timeout=reply_timeout)
    if sent.code != SMTPStatus.completed:
        await _abandon(client, start, reply_timeout=reply_timeout)
        raise aiosmtplib.SMTPSenderRefused(sent.code, sent.message, envelope.mail_from)
    refused: dict[str, Any] = {
        rcpt: aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, rcpt)
        for rcpt, reply in zip(envelope.rcpt_tos, answers, strict=True) if reply.code not in _RCPT_OK}
    if len(refused) == len(envelope.rcpt_tos):
        await _abandon(client, start, reply_timeout=reply_timeout)
        await client.rset()
        raise aiosmtplib.SMTPRecipientsRefused(list(refused.values()))
    assert start is not None  # sent unless the sender or every recipient was refused
    if start.code != SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol = client.protocol
    assert protocol is not None  # execute_command just used it
    await _write_data(protocol, dot_stuffed(raw), drain_timeout=reply_timeout)
    done = await protocol.read_response(timeout=reply_timeout)
    if done.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(done.code, done.message)
    return refused


class SmtpUpstream:
    """One SMTP connection to the upstream, opened lazily and reused for many messages."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self.settings
        tls_context = None
        if s.tls is not UpstreamTls.NONE and s.verify:
            tls_context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        return aiosmtplib.SMTP(
            hostname=s.host, port=s.port, local_hostname=s.helo, timeout=s.timeout,
            use_tls=s.tls is UpstreamTls.IMPLICIT,
            # True means REQUIRED: aiosmtplib's default (None) would fall back to clear text.
            start_tls=s.tls is UpstreamTls.STARTTLS,
            validate_certs=s.verify, tls_context=tls_context,
            username=s.username, password=s.password,
        )

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is None or not self._client.is_connected:
            self._client = self._new_client()
            await self._client.connect()
        return self._client

    async def send(self, envelope: Envelope, raw: bytes, *, queue_id: str) -> Results:
        if any(_CONTROL.search(a) for a in (envelope.mail_from, *envelope.rcpt_tos)):
            raise DeliveryError("control characters in an envelope address", code=0, permanent=True)
        try:
            return await self._send_once(envelope, raw)
        except aiosmtplib.SMTPServerDisconnected:
            # A reused connection the upstream closed while idle: one fresh try.
            await self.close()
        try:
            return await self._send_once(envelope, raw)
        except aiosmtplib.SMTPServerDisconnected as exc:
            await self.close()
            raise DeliveryError(f"upstream disconnected: {exc}") from exc

    async def _send_once(self, envelope: Envelope, raw: bytes) -> Results:
        try:
            client = await self._connected()
            if _ours_to_encode(envelope, raw):
                refused = await _sendmail_encoded(client, envelope, raw,
                                                  reply_timeout=self.settings.timeout)
            else:
                refused, _ = await client.sendmail(envelope.mail_from, list(envelope.rcpt_tos), raw)
        except asyncio.CancelledError:
            # Shutdown, perhaps in the middle of DATA, where close()'s QUIT would be read as
            # message text and wait for a reply that never comes: drop the connection instead.
            self._drop()
            raise
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return {r.recipient: (r.code, _text(r)) for r in exc.recipients}
        except aiosmtplib.SMTPServerDisconnected:
            raise
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            raise DeliveryError(f"upstream said {exc.code} {exc.message}"[:300], code=exc.code,
                                permanent=500 <= exc.code < 600) from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, ValueError) as exc:
            # ValueError: aiosmtplib refusing a setting, e.g. a HELO name with a CR/LF in it.
            await self.close()
            raise DeliveryError(f"upstream unreachable: {type(exc).__name__}: {exc}"[:300]) from exc
        results: Results = dict.fromkeys(envelope.rcpt_tos, (250, "ok"))
        for rcpt, resp in refused.items():
            results[rcpt] = (resp.code, _text(resp))
        return results

    async def _reset(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.rset()
            except aiosmtplib.SMTPException:
                await self.close()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class CaptureUpstream:
    """Dev mode: 'delivers' into the store's capture mailbox (``relayguard capture list``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def send(self, envelope: Envelope, raw: bytes, *, queue_id: str) -> Results:
        await self.store.add_capture(queue_id=queue_id, envelope=envelope, raw=raw)
        return dict.fromkeys(envelope.rcpt_tos, (250, "captured"))

    async def close(self) -> None:
        return None
