"""Alerts: a stuck or failing mail flow must be impossible to miss.

:func:`check` runs every minute on every instance and raises, by e-mail to ``alerts.admins``
(queued with ``origin="alert"`` through the normal delivery path), as an ``alert.raised`` log
event and as ``relayguard_alerts_total{kind}``:

- ``undelivered``: client mail still queued ``alert_after`` after it was accepted (or released);
- ``bounced``: every bounce, each reported once;
- ``held``: held mail waiting longer than ``held_after``;
- ``upstream``: the upstream unreachable: at least ``UPSTREAM_FAILURES`` messages whose latest
  attempt in the last ``UPSTREAM_WINDOW`` seconds could not connect (code 0), and nothing delivered;
- ``silence``: a submitter that sends every working day has been quiet for longer than its
  learned usual gap (see :func:`learn`), never less than ``silence_floor``.

De-duplication is one conflict-safe upsert on ``alert_state`` per alert key (see
``store.ops.claim_key``), so instances sharing PostgreSQL do not each send the same alert, and a
condition that persists is re-announced at most once per ``dedupe_for``. ``undelivered`` and
``bounced`` also stamp ``messages.alerted_at`` so each message is reported once; the ones that
arrive inside the de-duplication window are reported together when it ends.

Alerts name submitters, counts, queue ids and SMTP codes. Never subjects, recipients, upstream
reply text or bodies: an alert goes to a mailbox, and those can carry patient data.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from relayguard import notify
from relayguard.config import Settings
from relayguard.decision import DELIVER_UNCHANGED, Envelope
from relayguard.log import get_logger
from relayguard.store import State, Store, StoredMessage, ops
from relayguard.store import tables as t

log = get_logger("relayguard.alerts")

UPSTREAM_WINDOW = 300.0  # seconds of recent attempts looked at
UPSTREAM_FAILURES = 3  # connection failures in the window, with no delivery, mean "unreachable"
LEARN_DAYS = 14  # history a submitter's send pattern is learned from
MIN_ACTIVE_DAYS = 5  # fewer working days of history is not a pattern
ACTIVE_SHARE = 0.8  # "sends every working day": on at least this share of them
GAP_SLACK = 1.5  # quiet for 1.5x the usual longest gap before we call it silence
PROFILE_EVERY = 3600.0  # profiles are re-learned hourly and shared through alert_state
SILENCE_REPEAT = 24 * 3600.0  # a silence that goes on is announced again once a day
PROFILE_KEY = "silence:profiles"
LISTED = 20  # queue ids listed in one alert; the rest are counted
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    key: str  # the de-duplication key in alert_state
    subject: str
    body: str
    queue_ids: tuple[str, ...] = ()
    every: float | None = None  # seconds between repeats; None: settings.alerts.dedupe_for
    stamp: bool = False  # mark queue_ids alerted (each message reported once)
    details: dict[str, Any] = field(default_factory=dict)


# -- working time ----------------------------------------------------------------------------

def _is_workday(day: date) -> bool:
    return day.weekday() < 5  # Monday..Friday (UTC days; bank holidays are not known)


def working_seconds(start: float, end: float) -> float:
    """Seconds between ``start`` and ``end`` that fall on working days, so a weekend is no gap."""
    total, cursor = 0.0, start
    while cursor < end:
        day = datetime.fromtimestamp(cursor, UTC).date()
        next_midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + _DAY
        if _is_workday(day):
            total += min(end, next_midnight) - cursor
        cursor = next_midnight
    return total


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.0f}"


# -- the checks ------------------------------------------------------------------------------

def _why(msg: StoredMessage) -> str:
    """SMTP codes only: reply text can echo recipient addresses."""
    codes = sorted({int(r.get("code", 0)) for r in msg.results.values()})
    return ", ".join("unreachable" if c == 0 else str(c) for c in codes) or "not yet tried"


def _listing(messages: Sequence[StoredMessage], now: float) -> str:
    lines = [f"- {m.id}  {m.submitter.name}  {len(m.envelope.rcpt_tos)} rcpt  "
             f"{(now - m.created_at) / 60:.0f} min  attempts {m.attempts}  {_why(m)}"
             for m in messages[:LISTED]]
    if len(messages) > LISTED:
        lines.append(f"... and {len(messages) - LISTED} more")
    return "\n".join(lines)


async def _undelivered(store: Store, settings: Settings, now: float) -> list[Alert]:
    m = t.messages
    # Released mail is judged from its release, not from when it arrived to be held.
    released_at = (select(func.max(t.approvals.c.at)).where(t.approvals.c.message_id == m.c.id)
                   .scalar_subquery())
    after = settings.alerts.alert_after.total_seconds()
    stuck = await ops.messages_where(store, m.c.origin == "client", m.c.state == State.QUEUED.value,
                                     m.c.alerted_at.is_(None),
                                     func.coalesce(released_at, m.c.created_at) <= now - after)
    if not stuck:
        return []
    n = len(stuck)
    return [Alert("undelivered", "undelivered", f"{n} message(s) not delivered after "
                  f"{settings.alerts.alert_after}",
                  f"{n} message(s) accepted by the relay are still not delivered after "
                  f"{settings.alerts.alert_after}:\n\n{_listing(stuck, now)}\n",
                  tuple(s.id for s in stuck), stamp=True, details={"count": n})]


async def _bounced(store: Store, settings: Settings, now: float) -> list[Alert]:
    m = t.messages
    # alerted_at older than the bounce: it was reported while undelivered, not as a bounce.
    bounced = await ops.messages_where(store, m.c.origin == "client", m.c.state == State.BOUNCED.value,
                                       or_(m.c.alerted_at.is_(None), m.c.alerted_at < m.c.updated_at))
    if not bounced:
        return []
    n = len(bounced)
    return [Alert("bounced", "bounced", f"{n} message(s) bounced",
                  f"{n} message(s) could not be delivered and were returned to their senders:\n\n"
                  f"{_listing(bounced, now)}\n", tuple(b.id for b in bounced), stamp=True,
                  details={"count": n})]


async def _held(store: Store, settings: Settings, now: float) -> list[Alert]:
    m = t.messages
    after = settings.alerts.held_after.total_seconds()
    waiting = await ops.messages_where(store, m.c.origin == "client", m.c.state == State.HELD.value,
                                       m.c.created_at <= now - after)
    if not waiting:
        return []
    n = len(waiting)
    return [Alert("held", "held", f"{n} held message(s) waiting longer than {settings.alerts.held_after}",
                  f"{n} held message(s) have waited for review longer than "
                  f"{settings.alerts.held_after}:\n\n{_listing(waiting, now)}\n",
                  tuple(w.id for w in waiting), details={"count": n})]


async def _upstream(store: Store, settings: Settings, now: float) -> list[Alert]:
    m = t.messages
    since = now - UPSTREAM_WINDOW
    if await ops.messages_where(store, m.c.delivered_at >= since, limit=1):
        return []
    tried = await ops.messages_where(store, m.c.state == State.QUEUED.value, m.c.attempts > 0,
                                     m.c.updated_at >= since)
    failing = [x for x in tried
               if x.results and all(int(r.get("code", -1)) == 0 for r in x.results.values())]
    if len(failing) < UPSTREAM_FAILURES:
        return []
    where = f"{settings.upstream.host}:{settings.upstream.port}"
    return [Alert("upstream", "upstream", f"upstream {where} unreachable",
                  f"The upstream relay {where} could not be reached for {len(failing)} message(s) "
                  f"in the last {UPSTREAM_WINDOW / 60:.0f} minutes and nothing was delivered.\n"
                  "Mail is kept and retried; this alert itself is delivered once the upstream is back.\n",
                  details={"count": len(failing)})]


# -- silence ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Profile:
    """A submitter's learned habit: its usual longest working-time gap and daily volume."""

    gap: float
    per_day: int


def _workdays_before(now: float, days: int) -> list[date]:
    today = datetime.fromtimestamp(now, UTC).date()
    return [d for d in (today - timedelta(days=i) for i in range(1, days + 1)) if _is_workday(d)]


def learn(times: Sequence[float], now: float) -> Profile | None:
    """The profile of a submitter that sends every working day, else None.

    The usual gap is taken over *daily* longest gaps (each gap belongs to the day of the message
    that ends it) and is the second-largest of them, so one past outage does not teach us that
    outages are normal.
    """
    workdays = _workdays_before(now, LEARN_DAYS)
    by_day: dict[date, list[float]] = {}
    for at in times:
        by_day.setdefault(datetime.fromtimestamp(at, UTC).date(), []).append(at)
    active = [d for d in workdays if d in by_day]
    if len(active) < max(MIN_ACTIVE_DAYS, math.ceil(ACTIVE_SHARE * len(workdays))):
        return None
    daily_max: dict[date, float] = {}
    for earlier, later in itertools.pairwise(times):
        day = datetime.fromtimestamp(later, UTC).date()
        daily_max[day] = max(daily_max.get(day, 0.0), working_seconds(earlier, later))
    gaps = sorted(daily_max.values())
    if not gaps:
        return None
    usual = gaps[max(0, len(gaps) - 2)]
    per_day = round(sum(len(by_day[d]) for d in active) / len(active))
    return Profile(gap=usual, per_day=per_day)


async def _profiles(store: Store, now: float) -> dict[str, Profile]:
    """The learned profiles, re-learned at most hourly and shared by every instance."""
    cached = await ops.read_key(store, PROFILE_KEY)
    if cached is not None and now - cached[0] < PROFILE_EVERY:
        return {k: Profile(**v) for k, v in json.loads(cached[1]).items()}
    history = await ops.send_times(store, since=now - LEARN_DAYS * _DAY)
    profiles = {sub: p for sub, times in history.items() if (p := learn(times, now)) is not None}
    data = json.dumps({k: {"gap": p.gap, "per_day": p.per_day} for k, p in profiles.items()})
    async with store.begin() as conn:
        await ops.claim_key(conn, PROFILE_KEY, now, every=PROFILE_EVERY, details=data)
    return profiles


async def _silence(store: Store, settings: Settings, now: float) -> list[Alert]:
    profiles = await _profiles(store, now)
    if not profiles:
        return []
    last = await ops.last_sent(store)
    floor = settings.alerts.silence_floor.total_seconds()
    out = []
    for sub, profile in sorted(profiles.items()):
        if sub not in last:
            continue
        quiet = working_seconds(last[sub], now)
        if quiet <= max(profile.gap * GAP_SLACK, floor):
            continue
        # One key per silent spell: a new spell alerts at once, a long one daily.
        key = f"silence:{sub[:120]}:{int(last[sub])}"
        out.append(Alert("silence", key, f"{sub} has sent nothing for {_hours(quiet)} hours",
                         f"{sub} has sent nothing for {_hours(quiet)} working hours; it usually sends "
                         f"{profile.per_day} a day and is rarely quiet for more than "
                         f"{_hours(profile.gap)} working hours.\nCheck the system that sends as {sub}.\n",
                         every=SILENCE_REPEAT,
                         details={"submitter": sub, "quiet_s": round(quiet), "per_day": profile.per_day,
                                  "usual_gap_s": round(profile.gap)}))
    return out


# -- raising ---------------------------------------------------------------------------------

async def _raise(store: Store, settings: Settings, alert: Alert, now: float) -> bool:
    """Claim the alert's key, stamp its messages and queue the e-mail, in one transaction."""
    every = alert.every if alert.every is not None else settings.alerts.dedupe_for.total_seconds()
    async with store.begin() as conn:
        if not await ops.claim_key(conn, alert.key, now, every=every,
                                   details=json.dumps(alert.details, sort_keys=True)):
            return False
        if alert.stamp:
            await ops.mark_alerted(conn, alert.queue_ids, now)
        if rcpts := tuple(dict.fromkeys(settings.alerts.admins)):
            raw = notify.build(settings, to=rcpts, subject=f"[relayguard] {alert.subject}",
                               body=alert.body, now=now)
            await store.accept(raw=raw, envelope=Envelope(mail_from="", rcpt_tos=rcpts),
                               submitter=notify.NOTICE_SUBMITTER, decision=DELIVER_UNCHANGED,
                               subject=f"[relayguard] {alert.subject}"[:200], origin="alert", conn=conn)
    log.warning("alert.raised", kind=alert.kind, key=alert.key, queue_ids=list(alert.queue_ids[:LISTED]),
                **alert.details)
    return True


async def check(store: Store, settings: Settings) -> list[Alert]:
    """Look for every alert condition once; returns the alerts raised (after de-duplication)."""
    now = store.clock.now()
    found: list[Alert] = []
    for finder in (_undelivered, _bounced, _held, _upstream, _silence):
        found.extend(await finder(store, settings, now))
    return [a for a in found if await _raise(store, settings, a, now)]
