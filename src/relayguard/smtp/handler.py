"""The aiosmtpd handler: speaks SMTP, asks the engine, commits to the store, replies.

The engine decides (a pure function run off the event loop); this module only maps the
``Decision`` to a reply (:func:`reply_for`). Every path that has not committed the message
answers 4xx or 5xx, never 250.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from relayguard.crlf import canonical_line_endings
from relayguard.decision import Action, Decision, Envelope, Submitter, SubmitterKind
from relayguard.errors import StoreError
from relayguard.log import get_logger, safe
from relayguard.message import split_header_block
from relayguard.smtp.addresses import address_problem, domain_of

log = get_logger("relayguard.smtp")

# decide(raw, envelope, submitter) -> Decision; the relay runs it in worker processes.
Decider = Callable[[bytes, Envelope, Submitter], Awaitable[Decision]]
# commit(raw, envelope, submitter, decision, message_id, subject) -> queue id, in ONE transaction.
Committer = Callable[[bytes, Envelope, Submitter, Decision, str | None, str | None], Awaitable[str]]

# Message-ID and Subject are looked for in this much of a message at most.
_HEADER_SCAN_BYTES = 256 * 1024
# Up to this size the line-ending check runs in the loop. bytes.count holds the GIL, so a thread
# never ran it alongside the loop; it only let the loop in between its passes, and the hop there
# and back cost more than the check (~200 us at 100 KiB): with 64 KiB here, a 100 KiB message
# cost 8-15 % more CPU (7 paired runs). Above, the passes (~40 ms at 25 MiB) are worth splitting.
_INLINE_CRLF_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FrontLimits:
    max_recipients: int
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def reply_for(decision: Decision, queue_id: str) -> str:
    """The one place a Decision becomes an SMTP reply."""
    if decision.action is Action.REJECT:
        text = safe(decision.reply or "Message refused by policy", 300)
        return f"550 5.7.1 {text}"
    if decision.action is Action.HOLD:
        return f"250 2.0.0 Ok: held for review as {queue_id}"
    return f"250 2.0.0 Ok: queued as {queue_id}"


def _headers_of(raw: bytes) -> tuple[str | None, str | None]:
    """Message-ID and Subject, unfolded, for the log and the store (the header block only; read
    the way the engine and the rewriter read it, not with a second parser: the stdlib's took
    ~5 % of a 1 KiB message's CPU)."""
    block = split_header_block(raw[:_HEADER_SCAN_BYTES])
    mid, subject = block.first("message-id"), block.first("subject")
    return (safe(mid, 300) if mid else None, safe(subject, 500) if subject else None)


def _sender(envelope: SmtpEnvelope) -> str:
    """The envelope sender as stored: "" for the null sender ``<>``."""
    mail_from = envelope.mail_from or ""
    return "" if mail_from == "<>" else mail_from


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")


class RelayHandler:
    """aiosmtpd hooks: ``handle_<VERB>`` returns the reply text."""

    def __init__(self, *, limits: FrontLimits, decide: Decider, commit: Committer,
                 executor: Any = None) -> None:
        self.limits = limits
        self.decide = decide
        self.commit = commit
        self.executor = executor

    def is_trusted(self, session: Session) -> bool:
        try:
            ip = ipaddress.ip_address(_peer_ip(session))
        except ValueError:
            return False
        return any(ip in net for net in self.limits.trusted_networks)

    def submitter_of(self, session: Session, envelope: SmtpEnvelope) -> Submitter:
        ip = _peer_ip(session)
        if session.authenticated and session.auth_data:
            return Submitter(name=str(session.auth_data), kind=SubmitterKind.USER, client_addr=ip)
        return Submitter(name=_sender(envelope) or f"<>@{ip}", kind=SubmitterKind.NETWORK,
                         client_addr=ip)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope,  # noqa: N802
                          address: str, mail_options: list[str]) -> str:
        if not session.authenticated and not self.is_trusted(session):
            return "530 5.7.0 Authentication required"
        # aiosmtpd reports the null sender as "<>" and must keep it so (an empty mail_from reads
        # as "no MAIL yet" and RCPT gets 503); _sender() stores it empty: bounces are never bounced.
        utf8 = "SMTPUTF8" in (o.upper() for o in mail_options)
        if address != "<>" and (problem := address_problem(address, utf8=utf8)):
            return f"553 5.1.7 Sender address refused: {problem}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,  # noqa: N802
                          address: str, rcpt_options: list[str]) -> str:
        if not session.authenticated and not self.is_trusted(session):
            return "554 5.7.1 Relay access denied"
        if len(envelope.rcpt_tos) >= self.limits.max_recipients:
            return "452 4.5.3 Too many recipients"
        utf8 = "SMTPUTF8" in (o.upper() for o in envelope.mail_options)
        if problem := address_problem(address, utf8=utf8):
            return f"553 5.1.3 Recipient address refused: {problem}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient ok"

    async def handle_DATA(self, server: SMTP, session: Session,  # noqa: N802
                          envelope: SmtpEnvelope) -> str:
        started = time.perf_counter()
        content = envelope.original_content or b""
        if len(content) <= _INLINE_CRLF_BYTES:
            raw = canonical_line_endings(content)
        else:  # the loop runs between the check's passes over a message this large
            raw = await asyncio.get_running_loop().run_in_executor(
                self.executor, canonical_line_endings, content)
        env = Envelope(mail_from=_sender(envelope), rcpt_tos=tuple(envelope.rcpt_tos))
        submitter = self.submitter_of(session, envelope)
        message_id, subject = _headers_of(raw)
        decision = await self.decide(raw, env, submitter)
        try:
            queue_id = await self.commit(raw, env, submitter, decision, message_id, subject)
        except StoreError as exc:
            log.error("smtp.transaction", outcome="store_failed", error=safe(str(exc)),
                      message_id=message_id, submitter=safe(submitter.name))
            return "451 4.3.0 Temporary failure storing the message; please retry"
        reply = reply_for(decision, queue_id)
        log.info("smtp.transaction", queue_id=queue_id, message_id=message_id,
                 submitter=safe(submitter.name), submitter_kind=submitter.kind.value,
                 client=submitter.client_addr, size=len(raw), rcpt_count=len(env.rcpt_tos),
                 rcpt_domains=sorted({domain_of(r) for r in env.rcpt_tos})[:50],
                 action=decision.action.value,
                 rewrite=decision.rewrite.value if decision.rewrite else None,
                 rules=list(decision.rules),
                 findings={f.kind: f.count for f in decision.findings},
                 policy_version=decision.policy_version[:12], reply=reply[:3],
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return reply

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is a permanent 500 that echoes the exception text to the client.
        # An internal fault is our problem, not the message's: 451 makes the client retry.
        # The type and the innermost frame locate the fault; the message text could echo content.
        frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        where = f"{frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame else ""
        log.error("smtp.exception", error_type=type(error).__name__, where=where)
        return "451 4.3.0 Temporary internal error; please retry"
