"""Notices about held mail, sent through the normal delivery path (queued like any message).

Every notice is built here as RFC 5322 bytes and enqueued with ``origin="notice"`` inside the
caller's transaction, so "held" and "the sender was told" commit together. Notices use the null
envelope sender (``MAIL FROM:<>``) so that a notice that bounces cannot start a mail loop.

What a notice may contain: rule names, finding kinds and counts, the queue id, the subject, who
can act. Never patient identifiers, not even masked samples: a notice goes to a mailbox we do not
control. Each notice carries a signed, expiring link to the review page; the link only saves
typing, the page still needs a login (see ``relayguard.web``).
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard.config import Settings, parse_listen
from relayguard.decision import DELIVER_UNCHANGED, Decision, Envelope, Submitter, SubmitterKind
from relayguard.store import Store, StoredMessage

LINK_SALT = "relayguard-review-link"
LINK_MAX_AGE = 14 * 24 * 3600  # longer than the default hold, so a link works until expiry
NOTICE_SUBMITTER = Submitter("relayguard", SubmitterKind.USER)
_SECRET_FILE = "web-secret"  # noqa: S105 - a file name, not a secret
# Header injection guard: a subject we echo must never carry a line break.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- signed links ----------------------------------------------------------------------------

def secret_key(settings: Settings) -> str:
    """The web signing key: the configured one, else a random key kept beside the SQLite file.

    Several instances on PostgreSQL must configure ``web.secret_key``; the file fallback is for the
    embedded single-host default.
    """
    if settings.web.secret_key:
        return settings.web.secret_key
    folder = Path("var")
    if settings.store.url.startswith("sqlite"):
        db = make_url(settings.store.url).database
        if db and db != ":memory:":
            folder = Path(db).resolve().parent
    path = folder / _SECRET_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        # O_EXCL: when two processes race, the loser reads the winner's key instead.
        try:
            with path.open("x", encoding="ascii") as fh:
                fh.write(key)
            path.chmod(0o600)
        except FileExistsError:
            return path.read_text(encoding="ascii").strip()
        return key


def base_url(settings: Settings) -> str:
    if settings.web.base_url:
        return settings.web.base_url.rstrip("/")
    host, port = parse_listen(settings.web.listen, default_port=8025)
    return f"http://{host}:{port}"


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key(settings), salt=LINK_SALT)


def review_link(settings: Settings, queue_id: str) -> str:
    return f"{base_url(settings)}/go/{_serializer(settings).dumps(queue_id)}"


def check_link(settings: Settings, token: str, *, max_age: int = LINK_MAX_AGE) -> str | None:
    """The queue id a link points at, or None when forged or expired."""
    try:
        value = _serializer(settings).loads(token, max_age=max_age)
    except (SignatureExpired, BadSignature):
        return None
    return value if isinstance(value, str) else None


# -- building and enqueueing -----------------------------------------------------------------

def _from_address(settings: Settings) -> str:
    return f"relayguard@{settings.smtp.hostname}"


def build(settings: Settings, *, to: Sequence[str], subject: str, body: str, now: float) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"relayguard <{_from_address(settings)}>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = _CONTROL.sub(" ", subject)
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=settings.smtp.hostname)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders must not answer
    msg.set_content(body)
    return msg.as_bytes()


async def enqueue(conn: AsyncConnection, store: Store, settings: Settings, *, to: Iterable[str],
                  subject: str, body: str) -> str | None:
    """Queue one notice in the caller's transaction; None when there is nobody to tell."""
    rcpts = tuple(dict.fromkeys(a for a in to if a))
    if not rcpts:
        return None
    raw = build(settings, to=rcpts, subject=subject, body=body, now=store.clock.now())
    return await store.accept(raw=raw, envelope=Envelope(mail_from="", rcpt_tos=rcpts),
                              submitter=NOTICE_SUBMITTER, decision=DELIVER_UNCHANGED,
                              subject=_CONTROL.sub(" ", subject)[:200], origin="notice", conn=conn)


def reasons(decision: Decision) -> str:
    """Why it was held, safe for a notice: rule names and finding kinds with counts only."""
    kinds: Counter[str] = Counter()
    for finding in decision.findings:
        kinds[finding.kind] += finding.count
    rules = ", ".join(decision.rules) or "policy"
    found = ", ".join(f"{kind} ×{count}" for kind, count in sorted(kinds.items())) or "none"
    return f"Rules: {rules}\nFound: {found}"


def _who_can_release(decision: Decision) -> str:
    role = decision.approver_role or "reviewer"
    n = decision.approvals_required
    people = "one colleague" if n == 1 else f"{n} different colleagues"
    return f"{people} with the {role} role (not you)"


def _subject_line(subject: str | None) -> str:
    return _CONTROL.sub(" ", subject or "(no subject)")[:120]


# -- the notices -----------------------------------------------------------------------------

async def on_held(conn: AsyncConnection, store: Store, settings: Settings, *, queue_id: str,
                  envelope: Envelope, submitter: Submitter, decision: Decision,
                  subject: str | None) -> None:
    """Tell the sender why their message is held and prompt the reviewers (same transaction).

    Call it right after ``store.accept`` of a held message, inside the same ``store.begin()``.
    It writes notices only; the caller records the ``held`` audit entry.
    """
    link = review_link(settings, queue_id)
    why = reasons(decision)
    if settings.quarantine.notify_sender and envelope.mail_from:
        await enqueue(conn, store, settings, to=[envelope.mail_from],
                      subject=f"Held for review: {_subject_line(subject)}",
                      body=(f"Your message to {len(envelope.rcpt_tos)} recipient(s) has been held "
                            f"because it may contain patient data.\n\n{why}\n\nQueue id: {queue_id}\n"
                            f"It can be released by {_who_can_release(decision)}.\n"
                            f"Review it or request its release (login required):\n{link}\n"))
    await enqueue(conn, store, settings, to=settings.quarantine.reviewers,
                  subject=f"Review needed: {_subject_line(subject)}",
                  body=(f"A message from {submitter.name} to {len(envelope.rcpt_tos)} recipient(s) "
                        f"waits for review.\n\n{why}\n\nQueue id: {queue_id}\n"
                        f"Approvals needed: {decision.approvals_required} "
                        f"({decision.approver_role})\nReview (login required):\n{link}\n"))


async def to_sender(conn: AsyncConnection, store: Store, settings: Settings, message: StoredMessage,
                    *, outcome: str, detail: str = "") -> None:
    """Tell the sender their held message was released, rejected or expired."""
    if not settings.quarantine.notify_sender or not message.envelope.mail_from:
        return
    text = {"released": "was approved and is on its way",
            "rejected": "was rejected and will not be sent",
            "expired": "was not reviewed in time and has expired; it will not be sent"}[outcome]
    body = f"Your held message {message.id} ({_subject_line(message.subject)}) {text}.\n"
    if detail:
        body += f"\nReason given: {detail}\n"
    await enqueue(conn, store, settings, to=[message.envelope.mail_from],
                  subject=f"{outcome.capitalize()}: {_subject_line(message.subject)}", body=body)


async def release_requested(conn: AsyncConnection, store: Store, settings: Settings,
                            message: StoredMessage, *, requester: str, justification: str) -> None:
    await enqueue(conn, store, settings, to=settings.quarantine.reviewers,
                  subject=f"Release requested: {_subject_line(message.subject)}",
                  body=(f"{requester} asks for held message {message.id} to be released.\n\n"
                        f"Justification:\n{justification}\n\n{reasons(message.decision)}\n\n"
                        f"Review (login required):\n{review_link(settings, message.id)}\n"))


async def reminder(conn: AsyncConnection, store: Store, settings: Settings, message: StoredMessage,
                   *, expires_at: float) -> None:
    """Remind reviewers and escalate to admins before a hold expires."""
    hours = max(0, round((expires_at - store.clock.now()) / 3600))
    body = (f"Held message {message.id} from {message.submitter.name} "
            f"({_subject_line(message.subject)}) expires in about {hours} hour(s) unless reviewed.\n\n"
            f"{reasons(message.decision)}\n\nReview (login required):\n"
            f"{review_link(settings, message.id)}\n")
    await enqueue(conn, store, settings, to=settings.quarantine.reviewers,
                  subject=f"Reminder: review before expiry: {_subject_line(message.subject)}", body=body)
    await enqueue(conn, store, settings, to=settings.alerts.admins,
                  subject=f"Escalation: held mail about to expire: {_subject_line(message.subject)}",
                  body=body)


async def digest(conn: AsyncConnection, store: Store, settings: Settings,
                 held: Sequence[StoredMessage]) -> None:
    """One message listing everything that waits, for the reviewers."""
    now = store.clock.now()
    lines = [f"- {m.id}  {m.submitter.name}  {len(m.envelope.rcpt_tos)} rcpt  "
             f"{(now - m.created_at) / 3600:.0f} h  {', '.join(m.decision.rules) or 'policy'}"
             for m in held]
    await enqueue(conn, store, settings, to=settings.quarantine.reviewers,
                  subject=f"{len(held)} held message(s) wait for review",
                  body="\n".join(lines) + f"\n\nReview (login required): {base_url(settings)}/held\n")
