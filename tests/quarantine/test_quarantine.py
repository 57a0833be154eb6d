"""Held mail: second-person approval, rejection, races, expiry, reminders and notices."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from seeding import NHS, hold, notices

from relayguard import audit, notify, quarantine
from relayguard.clock import ManualClock
from relayguard.config import Settings
from relayguard.decision import SubmitterKind
from relayguard.errors import ConflictError, PermissionDenied
from relayguard.store import State, Store, User


async def _user(store: Store, name: str) -> User:
    user = await store.get_user(name)
    assert user is not None
    return user


async def test_reviewer_approval_queues_message(store: Store, settings: Settings, people: dict) -> None:
    """One reviewer's approval moves a held message to queued, audits it and tells the sender."""
    qid = await hold(store)
    result = await quarantine.approve(store, settings, qid, await _user(store, "rita"))
    assert result.state is State.QUEUED
    msg = await store.get(qid, with_raw=False)
    assert msg.state is State.QUEUED
    assert msg.next_attempt_at == store.clock.now()
    (entry,) = await audit.entries(store, obj=qid)
    assert (entry.actor, entry.action, entry.details["released"]) == ("rita", "approved", True)
    sent = await notices(store)
    assert [rcpts for rcpts, _ in sent] == [("alice@practice.nhs.uk",)]
    assert sent[0][1]["Subject"].startswith("Released")


async def test_sender_role_cannot_approve(store: Store, settings: Settings, people: dict) -> None:
    """A user with only the sender role is refused, and the message stays held."""
    qid = await hold(store, submitter="someone-else", mail_from="x@practice.nhs.uk")
    with pytest.raises(PermissionDenied, match="sender role"):
        await quarantine.approve(store, settings, qid, await _user(store, "bob"))
    assert (await store.get(qid, with_raw=False)).state is State.HELD


async def test_submitter_cannot_approve_own_mail(store: Store, settings: Settings, people: dict) -> None:
    """A reviewer who submitted the message over SMTP AUTH cannot approve it (four eyes)."""
    qid = await hold(store, submitter="Rita", mail_from="other@practice.nhs.uk")
    with pytest.raises(PermissionDenied, match="four-eyes"):
        await quarantine.approve(store, settings, qid, await _user(store, "rita"))


async def test_envelope_sender_cannot_approve(store: Store, settings: Settings, people: dict) -> None:
    """For trusted-network mail, a reviewer whose address is the envelope sender is refused."""
    qid = await hold(store, submitter="ROB@practice.nhs.uk", kind=SubmitterKind.NETWORK,
                     mail_from="ROB@practice.nhs.uk")
    with pytest.raises(PermissionDenied, match="four-eyes"):
        await quarantine.approve(store, settings, qid, await _user(store, "rob"))
    with pytest.raises(PermissionDenied, match="four-eyes"):
        await quarantine.reject(store, settings, qid, await _user(store, "rob"), reason="no")


async def test_two_approvals_need_two_people(store: Store, settings: Settings, people: dict) -> None:
    """A rule demanding 2 approvals keeps the message held until a second, different reviewer approves."""
    qid = await hold(store, approvals=2)
    first = await quarantine.approve(store, settings, qid, await _user(store, "rita"))
    assert (first.state, first.approvals, first.required) == (State.HELD, 1, 2)
    with pytest.raises(PermissionDenied, match="already approved"):
        await quarantine.approve(store, settings, qid, await _user(store, "rita"))
    assert (await store.get(qid, with_raw=False)).state is State.HELD
    second = await quarantine.approve(store, settings, qid, await _user(store, "rob"))
    assert second.state is State.QUEUED
    assert sorted(await quarantine.approvals(store, qid)) == ["rita", "rob"]


async def test_admin_role_rule(store: Store, settings: Settings, people: dict) -> None:
    """When the rule demands the admin role, a reviewer is refused and an admin may approve."""
    qid = await hold(store, role="admin")
    with pytest.raises(PermissionDenied, match="needs admin"):
        await quarantine.approve(store, settings, qid, await _user(store, "rita"))
    assert (await quarantine.approve(store, settings, qid, await _user(store, "ada"))).state is State.QUEUED


async def test_reject_records_reason(store: Store, settings: Settings, people: dict) -> None:
    """Rejection needs a reason, moves the message to rejected and tells the sender why."""
    qid = await hold(store)
    rita = await _user(store, "rita")
    with pytest.raises(ValueError, match="reason is required"):
        await quarantine.reject(store, settings, qid, rita, reason="  ")
    await quarantine.reject(store, settings, qid, rita, reason="Send via nhs.net instead")
    assert (await store.get(qid, with_raw=False)).state is State.REJECTED
    (_, notice), = await notices(store)
    assert "Send via nhs.net instead" in notice.get_content()
    (entry,) = await audit.entries(store, obj=qid)
    assert entry.details["reason"] == "Send via nhs.net instead"


async def test_approve_after_reject_conflicts(store: Store, settings: Settings, people: dict) -> None:
    """Approving a message another reviewer already rejected fails with a clear conflict."""
    qid = await hold(store)
    await quarantine.reject(store, settings, qid, await _user(store, "rita"), reason="no")
    with pytest.raises(ConflictError, match=r"cannot approve: message .* is rejected"):
        await quarantine.approve(store, settings, qid, await _user(store, "rob"))


async def test_concurrent_approve_and_reject_one_wins(store: Store, settings: Settings,
                                                      people: dict) -> None:
    """Approve and reject racing on one message: exactly one succeeds, the other conflicts."""
    rita, rob = await _user(store, "rita"), await _user(store, "rob")
    for _ in range(5):
        qid = await hold(store)
        results = await asyncio.gather(
            quarantine.approve(store, settings, qid, rita),
            quarantine.reject(store, settings, qid, rob, reason="race"),
            return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], ConflictError)
        state = (await store.get(qid, with_raw=False)).state
        assert state is (State.REJECTED if isinstance(results[0], ConflictError) else State.QUEUED)
        assert len(await audit.entries(store, obj=qid)) == 1
    assert (await audit.verify(store))[0]


async def test_expiry_with_reminder(store: Store, settings: Settings, clock: ManualClock) -> None:
    """Before expiry reviewers get a reminder and admins an escalation; after it the hold expires."""
    qid = await hold(store)
    clock.advance(timedelta(days=6, hours=1).total_seconds())
    first = await quarantine.sweep(store, settings)
    assert (first.reminded, first.expired) == ([qid], [])
    assert (await quarantine.sweep(store, settings)).reminded == []  # reminded once only
    clock.advance(timedelta(hours=23).total_seconds())
    done = await quarantine.sweep(store, settings)
    assert done.expired == [qid]
    assert (await store.get(qid, with_raw=False)).state is State.EXPIRED
    rcpts = [r for r, _ in await notices(store)]
    assert ("reviewers@practice.nhs.uk",) in rcpts
    assert ("admins@practice.nhs.uk",) in rcpts
    assert ("alice@practice.nhs.uk",) in rcpts
    assert [e.action for e in await audit.entries(store, obj=qid)] == ["reminded", "expired"]
    assert (await quarantine.sweep(store, settings)).expired == []


async def test_digest_once_a_day(store: Store, settings: Settings, clock: ManualClock) -> None:
    """Reviewers get one digest of waiting mail per day, not one per sweep."""
    await hold(store)
    assert (await quarantine.sweep(store, settings)).digest_sent
    assert not (await quarantine.sweep(store, settings)).digest_sent
    clock.advance(quarantine.DIGEST_EVERY)
    assert (await quarantine.sweep(store, settings)).digest_sent


async def test_on_held_notices_carry_no_identifiers(store: Store, settings: Settings) -> None:
    """The held notices name rules, kinds and the queue id with a signed link, never identifiers."""
    qid = await hold(store)
    msg = await store.get(qid, with_raw=False)
    async with store.begin() as conn:
        await notify.on_held(conn, store, settings, queue_id=qid, envelope=msg.envelope,
                             submitter=msg.submitter, decision=msg.decision, subject=msg.subject)
    sent = await notices(store)
    assert sorted(r for r, _ in sent) == [("alice@practice.nhs.uk",), ("reviewers@practice.nhs.uk",)]
    for _, notice in sent:
        body = notice.get_content()
        assert qid in body
        assert "nhs-to-freemail" in body
        assert "nhs_number" in body
        assert NHS not in body
        assert "943 ***" not in body
        token = body.split("/go/")[1].split()[0]
        assert notify.check_link(settings, token) == qid
        assert notice["Auto-Submitted"] == "auto-generated"


def test_links_are_signed_and_expire(settings: Settings) -> None:
    """A tampered or expired review link resolves to nothing."""
    link = notify.review_link(settings, "abc123")
    token = link.rsplit("/", 1)[1]
    assert notify.check_link(settings, token) == "abc123"
    assert notify.check_link(settings, token[:-2] + "xx") is None
    assert notify.check_link(settings, token, max_age=-1) is None


async def test_request_release(store: Store, settings: Settings, people: dict) -> None:
    """The sender may ask for release with a justification that reaches reviewers; others may not."""
    qid = await hold(store)
    with pytest.raises(PermissionDenied):
        await quarantine.request_release(store, settings, qid, await _user(store, "bob"),
                                         justification="please")
    await quarantine.request_release(store, settings, qid, await _user(store, "alice"),
                                     justification="Patient asked for their own results")
    (rcpts, notice), = await notices(store)
    assert rcpts == ("reviewers@practice.nhs.uk",)
    assert "Patient asked for their own results" in notice.get_content()
    assert [e.action for e in await audit.entries(store, obj=qid)] == ["release_requested"]
