"""Queries for operations: metrics, alerts, retention, the queue CLI and the daily report.

Kept out of ``base.py`` so the core store stays small; every function takes the :class:`Store`
and, where it writes, the caller's transaction. None of them reads ``message_bodies``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard.store import tables as t
from relayguard.store.base import _SUMMARY_COLUMNS, Store
from relayguard.store.records import StoredMessage
from relayguard.store.states import State

m = t.messages
# Mail in these states is finished with; its body is no longer needed (see relayguard.retention).
FINISHED_STATES = (State.DELIVERED, State.BOUNCED, State.REJECTED, State.EXPIRED, State.REFUSED)
# A held message that has been let go: approved (queued again) and anything after that.
RELEASED_STATES = (State.APPROVED, State.QUEUED, State.DELIVERED, State.BOUNCED)


@dataclass(frozen=True, slots=True)
class CountRow:
    """How many messages share one (submitter, origin, state, action)."""

    submitter: str
    origin: str
    state: str
    action: str
    count: int


async def _rows(store: Store, stmt: Any) -> Sequence[Any]:
    async with store.engine.connect() as conn:
        return (await conn.execute(stmt)).fetchall()


async def message_counts(store: Store, *, since: float | None = None, until: float | None = None,
                         origin: str | None = None) -> list[CountRow]:
    """Message counts grouped by submitter, origin, state and decision (one query)."""
    cols = (m.c.submitter, m.c.origin, m.c.state, m.c.action)
    stmt = select(*cols, func.count()).group_by(*cols)
    if since is not None:
        stmt = stmt.where(m.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(m.c.created_at < until)
    if origin is not None:
        stmt = stmt.where(m.c.origin == origin)
    return [CountRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]))
            for r in await _rows(store, stmt)]


async def messages_where(store: Store, *conditions: Any, limit: int = 1000) -> list[StoredMessage]:
    """Summaries (no body) of messages matching ``conditions``, oldest first."""
    stmt = select(*_SUMMARY_COLUMNS).where(*conditions).order_by(m.c.created_at).limit(limit)
    return [StoredMessage.from_row(r) for r in await _rows(store, stmt)]


async def mark_alerted(conn: AsyncConnection, ids: Sequence[str], now: float) -> None:
    """Record that these messages have been alerted on (``updated_at`` is left alone)."""
    if ids:
        await conn.execute(update(m).where(m.c.id.in_(list(ids))).values(alerted_at=now))


async def last_sent(store: Store, *, origin: str = "client") -> dict[str, float]:
    """Each submitter's most recent message time."""
    stmt = (select(m.c.submitter, func.max(m.c.created_at)).where(m.c.origin == origin)
            .group_by(m.c.submitter))
    return {str(r[0]): float(r[1]) for r in await _rows(store, stmt)}


async def send_times(store: Store, *, since: float, origin: str = "client") -> dict[str, list[float]]:
    """Every message time per submitter since ``since``, ascending (for learning send patterns)."""
    stmt = (select(m.c.submitter, m.c.created_at)
            .where(m.c.origin == origin, m.c.created_at >= since)
            .order_by(m.c.submitter, m.c.created_at))
    out: dict[str, list[float]] = {}
    for row in await _rows(store, stmt):
        out.setdefault(str(row[0]), []).append(float(row[1]))
    return out


async def claim_key(conn: AsyncConnection, key: str, now: float, *, every: float,
                    details: str = "{}") -> bool:
    """True when ``key`` was not claimed in the last ``every`` seconds, and claim it now.

    One conflict-safe statement (INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING), so two
    instances checking at the same moment cannot both win: the row lock makes the second see the
    first one's ``last_at`` and update nothing.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    ins = dialect.insert(t.alert_state).values(key=key, last_at=now, details=details)
    stmt = ins.on_conflict_do_update(
        index_elements=[t.alert_state.c.key],
        set_={"last_at": ins.excluded.last_at, "details": ins.excluded.details},
        where=t.alert_state.c.last_at <= now - every,
    ).returning(t.alert_state.c.key)
    return (await conn.execute(stmt)).first() is not None


async def read_key(store: Store, key: str) -> tuple[float, str] | None:
    """``(last_at, details)`` of one alert_state row, or None."""
    stmt = select(t.alert_state.c.last_at, t.alert_state.c.details).where(t.alert_state.c.key == key)
    rows = await _rows(store, stmt)
    return (float(rows[0][0]), str(rows[0][1])) if rows else None


async def purge_bodies(conn: AsyncConnection, *, before: float, now: float, limit: int) -> list[str]:
    """Drop the bodies of finished mail last changed before ``before``; returns the ids purged.

    ``SKIP LOCKED`` lets two instances purge at once without waiting on (or double-counting)
    each other's rows; SQLite ignores it, its writers are serialised anyway.
    """
    due = (select(m.c.id)
           .where(m.c.state.in_([s.value for s in FINISHED_STATES]), m.c.purged_at.is_(None),
                  m.c.updated_at < before)
           .order_by(m.c.id).limit(limit).with_for_update(skip_locked=True))
    ids = [str(r[0]) for r in (await conn.execute(due)).fetchall()]
    if ids:
        await conn.execute(delete(t.message_bodies).where(t.message_bodies.c.id.in_(ids)))
        await conn.execute(update(m).where(m.c.id.in_(ids)).values(purged_at=now))
    return ids


async def make_due(conn: AsyncConnection, *, now: float, queue_id: str | None = None) -> int:
    """Queued mail (one message, or every deferred one) becomes due now; returns how many."""
    cond = [m.c.state == State.QUEUED.value]
    cond.append(m.c.id == queue_id if queue_id is not None else m.c.attempts > 0)
    stmt = update(m).where(*cond).values(next_attempt_at=now)
    return int((await conn.execute(stmt)).rowcount)


async def hold_queued(conn: AsyncConnection, queue_id: str, *, now: float) -> bool:
    """Queued → held, unless a worker holds its lease (it is being sent right now)."""
    unleased = or_(m.c.lease_until.is_(None), m.c.lease_until < now)
    stmt = (update(m).where(and_(m.c.id == queue_id, m.c.state == State.QUEUED.value, unleased))
            .values(state=State.HELD.value, updated_at=now, next_attempt_at=None))
    return bool((await conn.execute(stmt)).rowcount)
