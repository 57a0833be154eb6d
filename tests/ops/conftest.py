"""Fixtures for the operations tests: a store on each backend driven by a ManualClock, and seeding."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from relayguard.clock import ManualClock
from relayguard.config import Settings
from relayguard.decision import Action, Decision, Envelope, Finding, Submitter, SubmitterKind
from relayguard.store import State, Store, open_store

# Monday 2027-03-01 09:00 UTC: the silence tests need to know which days are working days.
MONDAY_9AM = datetime(2027, 3, 1, 9, tzinfo=UTC).timestamp()
ADMINS = ["it-alerts@practice.nhs.uk"]
NHS = "436 614 1345"  # a valid, issued-range NHS number: must never reach an alert
DELIVER = Decision(policy_version="test")
HOLD = Decision(action=Action.HOLD, rules=("nhs-to-freemail",),
                findings=(Finding(kind="nhs_number", where="body", count=1, sample="943 *** **19"),))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MONDAY_9AM)


@pytest.fixture
def settings(store_url: str) -> Settings:
    return Settings(store={"url": store_url}, alerts={"admins": ADMINS},
                    web={"secret_key": "test-secret"}, policy={"watch": False})


@pytest.fixture
async def store(store_url: str, clock: ManualClock) -> AsyncIterator[Store]:
    s = open_store(store_url, clock=clock)
    await s.migrate()
    yield s
    await s.close()


async def accept(store: Store, *, submitter: str = "reception@oakfield.nhs.uk",
                 decision: Decision = DELIVER, rcpts: tuple[str, ...] = ("ward7@nhs.net",),
                 origin: str = "client") -> str:
    """Accept one client message as the SMTP path would (its subject carries an identifier)."""
    raw = f"Subject: Referral {NHS}\r\n\r\nPatient {NHS} seen today.\r\n".encode()
    return await store.accept(raw=raw, envelope=Envelope(mail_from=submitter, rcpt_tos=rcpts),
                              submitter=Submitter(submitter, SubmitterKind.NETWORK), decision=decision,
                              subject=f"Referral {NHS}", origin=origin)


async def finish(store: Store, queue_id: str, state: State, *, code: int = 250,
                 reply: str = "ok") -> None:
    """Record one delivery attempt with ``code`` for every recipient, as the worker would."""
    [claimed] = [m for m in await store.claim("test", limit=100, lease=60) if m.id == queue_id]
    step = {State.DELIVERED: "delivered", State.BOUNCED: "failed"}.get(state, "deferred")
    results = {r: {"code": code, "reply": reply, "state": step} for r in claimed.envelope.rcpt_tos}
    assert await store.finish_attempt(queue_id, "test", state=state, results=results,
                                      next_attempt_at=None if state is not State.QUEUED else
                                      store.clock.now() + 60, error=None if code == 250 else reply)
    await store.release_leases("test")
