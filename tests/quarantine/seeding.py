"""Fixtures and helpers shared by the quarantine, CLI and web tests: a real SQLite store, people, holds."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from relayguard.auth import hash_password
from relayguard.clock import ManualClock
from relayguard.config import Settings
from relayguard.decision import Action, Decision, Envelope, Finding, Submitter, SubmitterKind
from relayguard.store import State, Store, open_store

PASSWORD = "correct horse battery"
NHS = "943 476 5919"  # a valid-checksum test NHS number
# name -> (role, email)
PEOPLE = {
    "alice": ("sender", "alice@practice.nhs.uk"),
    "bob": ("sender", "bob@practice.nhs.uk"),
    "rita": ("reviewer", "rita@practice.nhs.uk"),
    "rob": ("reviewer", "rob@practice.nhs.uk"),
    "ada": ("admin", "ada@practice.nhs.uk"),
}


def make_settings(tmp_path: Path) -> Settings:
    return Settings(
        store={"url": f"sqlite:///{tmp_path}/t.db"},
        web={"secret_key": "test-secret-key-for-links", "listen": "127.0.0.1:8025"},
        quarantine={"reviewers": ["reviewers@practice.nhs.uk"]},
        alerts={"admins": ["admins@practice.nhs.uk"]},
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def store(settings: Settings, clock: ManualClock) -> AsyncIterator[Store]:
    s = open_store(settings.store.url, clock=clock)
    await s.migrate()
    yield s
    await s.close()


_HASH = hash_password(PASSWORD)  # argon2 is slow on purpose; hash once per session


@pytest.fixture
async def people(store: Store) -> dict[str, str]:
    for name, (role, addr) in PEOPLE.items():
        await store.add_user(name=name, password_hash=_HASH, role=role, email=addr)
    return {name: addr for name, (_, addr) in PEOPLE.items()}


def raw_message(*, subject: str = "Referral", body: str = f"Patient NHS {NHS} seen today.",
                attachment: tuple[str, str] | None = None, sender: str = "alice@practice.nhs.uk") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "someone@gmail.com"
    msg["Subject"] = subject
    msg.set_content(body)
    if attachment:
        msg.add_attachment(attachment[1].encode(), maintype="text", subtype="csv", filename=attachment[0])
    return msg.as_bytes()


async def hold(store: Store, *, submitter: str = "alice", kind: SubmitterKind = SubmitterKind.USER,
               mail_from: str = "alice@practice.nhs.uk", approvals: int = 1, role: str = "reviewer",
               raw: bytes | None = None, subject: str = "Referral",
               rcpts: tuple[str, ...] = ("someone@gmail.com",)) -> str:
    """Accept one held message as the SMTP path would; returns its queue id."""
    decision = Decision(action=Action.HOLD, rules=("nhs-to-freemail",),
                        findings=(Finding(kind="nhs_number", where="body", count=1, sample="943 *** **19"),),
                        approvals_required=approvals, approver_role=role)
    return await store.accept(raw=raw or raw_message(subject=subject), subject=subject,
                              envelope=Envelope(mail_from=mail_from, rcpt_tos=rcpts),
                              submitter=Submitter(submitter, kind), decision=decision)


async def notices(store: Store) -> list[tuple[tuple[str, ...], email.message.Message]]:
    """Every queued notice as (envelope recipients, parsed message)."""
    out = []
    for summary in await store.list_messages(origin="notice", newest_first=False):
        full = await store.get(summary.id)
        assert full.state is State.QUEUED
        assert full.envelope.mail_from == ""
        parsed = email.message_from_bytes(full.raw or b"", policy=email.policy.default)
        out.append((full.envelope.rcpt_tos, parsed))
    return out
