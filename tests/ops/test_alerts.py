"""Alerts with a moveable clock: undelivered, bounced, held, upstream down, silence, de-duplication."""

from __future__ import annotations

import asyncio
import email
import email.policy
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from relayguard import alerts
from relayguard.alerts import learn, working_seconds
from relayguard.clock import ManualClock
from relayguard.config import Settings
from relayguard.store import State, Store, open_store
from tests.ops.conftest import ADMINS, HOLD, NHS, accept, finish

LETTERS = "letters@trust.nhs.uk"


async def alert_mail(store: Store) -> list[email.message.EmailMessage]:
    """Every alert e-mail queued so far, parsed, oldest first."""
    out = []
    for summary in await store.list_messages(origin="alert", newest_first=False):
        full = await store.get(summary.id)
        assert full.envelope.rcpt_tos == tuple(ADMINS) and full.envelope.mail_from == ""
        out.append(email.message_from_bytes(full.raw or b"", policy=email.policy.default))
    return out


def body(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def test_undelivered_after_alert_after_raises_once(store: Store, settings: Settings,
                                                         clock: ManualClock) -> None:
    """Mail still queued after alert_after raises one alert naming it; later checks stay quiet."""
    stuck = await accept(store)
    clock.advance(14 * 60)
    assert await alerts.check(store, settings) == []
    clock.advance(2 * 60)
    [alert] = await alerts.check(store, settings)
    assert alert.kind == "undelivered" and alert.queue_ids == (stuck,)
    [mail] = await alert_mail(store)
    assert "1 message(s) not delivered" in str(mail["Subject"]) and stuck in body(mail)
    clock.advance(3 * 3600)  # past dedupe_for: the same message is not reported again
    assert await alerts.check(store, settings) == []
    assert len(await alert_mail(store)) == 1


async def test_released_mail_is_timed_from_its_release(store: Store, settings: Settings,
                                                       clock: ManualClock) -> None:
    """A message held for hours and just approved is not 'undelivered' the moment it is released."""
    from sqlalchemy import insert  # noqa: PLC0415

    from relayguard.store import tables as t  # noqa: PLC0415

    held = await accept(store, decision=HOLD)
    clock.advance(3 * 3600)
    async with store.begin() as conn:
        await conn.execute(insert(t.approvals).values(message_id=held, reviewer="rita", at=clock.now()))
        await store.set_state(held, State.QUEUED, expect=[State.HELD], conn=conn)
    assert [a.kind for a in await alerts.check(store, settings)] == []
    clock.advance(16 * 60)
    assert [a.kind for a in await alerts.check(store, settings)] == ["undelivered"]


async def test_every_bounce_is_reported_once(store: Store, settings: Settings, clock: ManualClock) -> None:
    """A bounce raises an alert; a second bounce inside the de-duplication window follows after it."""
    first = await accept(store)
    await finish(store, first, State.BOUNCED, code=550, reply=f"550 no such user {NHS}")
    [alert] = await alerts.check(store, settings)
    assert alert.kind == "bounced" and alert.queue_ids == (first,)
    second = await accept(store)
    await finish(store, second, State.BOUNCED, code=550, reply="550 no such user")
    clock.advance(60)
    assert await alerts.check(store, settings) == []  # inside dedupe_for: no storm
    clock.advance(settings.alerts.dedupe_for.total_seconds())
    [later] = await alerts.check(store, settings)
    assert later.kind == "bounced" and later.queue_ids == (second,)
    mails = await alert_mail(store)
    assert len(mails) == 2
    assert "550" in body(mails[0]) and first in body(mails[0])


async def test_a_bounce_after_an_undelivered_alert_is_still_reported(store: Store, settings: Settings,
                                                                    clock: ManualClock) -> None:
    """A message reported as undelivered that later bounces is reported again, as a bounce."""
    queue_id = await accept(store)
    clock.advance(20 * 60)
    assert [a.kind for a in await alerts.check(store, settings)] == ["undelivered"]
    clock.advance(60)
    await finish(store, queue_id, State.BOUNCED, code=550)
    assert [a.kind for a in await alerts.check(store, settings)] == ["bounced"]


async def test_alerts_carry_no_identifiers_or_subjects(store: Store, settings: Settings,
                                                       clock: ManualClock) -> None:
    """Alert mail and log events name queue ids, submitters and codes, never subjects or replies."""
    queue_id = await accept(store)
    await finish(store, queue_id, State.BOUNCED, code=550, reply=f"550 user {NHS} unknown")
    await accept(store, decision=HOLD)
    clock.advance(5 * 3600)
    with capture_logs() as logs:
        raised = await alerts.check(store, settings)
    assert {a.kind for a in raised} == {"bounced", "held"}
    for mail in await alert_mail(store):
        assert NHS not in mail.as_string() and "Referral" not in mail.as_string()
    assert logs and NHS not in repr(logs) and "Referral" not in repr(logs)
    assert {e["kind"] for e in logs if e["event"] == "alert.raised"} == {"bounced", "held"}


async def test_held_mail_waiting_too_long_is_repeated_per_dedupe_window(
        store: Store, settings: Settings, clock: ManualClock) -> None:
    """Held mail past held_after alerts, is quiet within dedupe_for, and is reminded after it."""
    await accept(store, decision=HOLD)
    clock.advance(settings.alerts.held_after.total_seconds() - 60)
    assert await alerts.check(store, settings) == []
    clock.advance(120)
    assert [a.kind for a in await alerts.check(store, settings)] == ["held"]
    clock.advance(600)
    assert await alerts.check(store, settings) == []
    clock.advance(settings.alerts.dedupe_for.total_seconds())
    assert [a.kind for a in await alerts.check(store, settings)] == ["held"]


async def test_upstream_unreachable(store: Store, settings: Settings, clock: ManualClock) -> None:
    """Several connection failures (code 0) and no delivery in the window mean upstream down."""
    ids = [await accept(store) for _ in range(3)]
    for queue_id in ids[:2]:
        await finish(store, queue_id, State.QUEUED, code=0, reply="upstream unreachable")
    assert [a.kind for a in await alerts.check(store, settings)] == []  # two is not yet a pattern
    await finish(store, ids[2], State.QUEUED, code=0, reply="upstream unreachable")
    [alert] = await alerts.check(store, settings)
    assert alert.kind == "upstream" and alert.details["count"] == 3


async def test_upstream_with_a_recent_delivery_is_not_down(store: Store, settings: Settings) -> None:
    """Connection failures next to a successful delivery are not an upstream outage."""
    for _ in range(3):
        await finish(store, await accept(store), State.QUEUED, code=0, reply="unreachable")
    await finish(store, await accept(store), State.DELIVERED)
    assert [a.kind for a in await alerts.check(store, settings)] == []


async def test_two_instances_checking_at_once_send_one_alert(store: Store, store_url: str,
                                                              settings: Settings, clock: ManualClock) -> None:
    """Two instances sharing the store check at the same moment: exactly one alert e-mail."""
    await accept(store, decision=HOLD)
    clock.advance(5 * 3600)
    other = open_store(store_url, clock=clock)
    try:
        a, b = await asyncio.gather(alerts.check(store, settings), alerts.check(other, settings))
    finally:
        await other.close()
    assert sorted(len(x) for x in (a, b)) == [0, 1]
    assert len(await alert_mail(store)) == 1


# -- silence ---------------------------------------------------------------------------------

def at(day: int, hour: float) -> float:
    """Epoch seconds ``day`` days after Monday 2027-03-01 (negative: before), at ``hour`` UTC."""
    return datetime(2027, 3, 1, tzinfo=UTC).timestamp() + day * 86400 + hour * 3600


async def seed_letters(store: Store, clock: ManualClock, *, first: int = -14, last: int = 0,
                       per_day: int = 20) -> None:
    """A clinical system's letters: ``per_day`` each working day 08:00-17:30, days first..last."""
    clock.advance(at(first, 0) - clock.now())
    for day in range(first, last + 1):
        if datetime.fromtimestamp(at(day, 12), UTC).weekday() >= 5:
            continue
        for i in range(per_day):
            clock.advance(at(day, 8 + 9.5 * i / (per_day - 1)) - clock.now())
            await accept(store, submitter=LETTERS)


def test_working_seconds_skip_the_weekend() -> None:
    """Friday 17:00 to Monday 09:00 is 16 working hours, not 64."""
    assert working_seconds(at(-3, 17), at(0, 9)) == 16 * 3600
    assert working_seconds(at(0, 9), at(0, 10)) == 3600


def test_learn_needs_mail_on_most_working_days() -> None:
    """A sender seen on two days has no pattern; one seen every working day has its overnight gap."""
    assert learn([at(-2, 9), at(-1, 9)], at(0, 12)) is None
    daily = [at(d, h) for d in range(-14, 0) for h in (8, 12, 17.5)
             if datetime.fromtimestamp(at(d, 12), UTC).weekday() < 5]
    profile = learn(daily, at(0, 12))
    assert profile is not None and profile.per_day == 3
    assert profile.gap == 14.5 * 3600  # 17:30 to 08:00 next working day


async def test_silent_submitter_is_alerted(store: Store, settings: Settings, clock: ManualClock) -> None:
    """letters@trust, which sends every working day, goes quiet for 26 hours: one silence alert."""
    await seed_letters(store, clock)
    await accept(store, submitter="someone@oakfield.nhs.uk")  # sporadic: never a silence alert
    clock.advance(at(1, 10) - clock.now())  # Tuesday 10:00, 16.5 working hours after the last letter
    assert [a for a in await alerts.check(store, settings) if a.kind == "silence"] == []
    clock.advance(at(1, 19.5) - clock.now())  # Tuesday 19:30: 26 hours
    [alert] = [a for a in await alerts.check(store, settings) if a.kind == "silence"]
    assert alert.details["submitter"] == LETTERS and alert.details["per_day"] == 20
    assert alert.subject == f"{LETTERS} has sent nothing for 26 hours"
    mails = [m for m in await alert_mail(store) if "sent nothing" in str(m["Subject"])]
    assert len(mails) == 1 and "usually sends 20 a day" in body(mails[0])
    clock.advance(3600)
    assert [a for a in await alerts.check(store, settings) if a.kind == "silence"] == []


async def test_a_weekend_is_not_silence(store: Store, settings: Settings, clock: ManualClock) -> None:
    """No letters from Friday evening to Monday morning is the usual pattern, not an alert."""
    await seed_letters(store, clock, first=-17, last=-3)  # history ends Friday 17:30
    clock.advance(at(0, 7.5) - clock.now())  # Monday 07:30
    assert [a for a in await alerts.check(store, settings) if a.kind == "silence"] == []


async def test_silence_floor_applies(store: Store, settings: Settings, clock: ManualClock) -> None:
    """A sender with short gaps is not alerted before the configured floor."""
    await seed_letters(store, clock)
    floor = settings.model_copy(update={"alerts": settings.alerts.model_copy(
        update={"silence_floor": timedelta(hours=40)})})
    clock.advance(at(1, 19.5) - clock.now())
    assert [a for a in await alerts.check(store, floor) if a.kind == "silence"] == []
