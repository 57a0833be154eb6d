"""Held mail: approve (second person), reject, request release, expire, remind.

```
held ──approve (n of decision.approvals_required)──► approved ──► queued ──► delivered
  ├──reject (reason)──► rejected
  └──sweep (expire_after)──► expired
```

``approved`` is transient: the final approval moves the message on to ``queued`` in the same
transaction, where the delivery worker claims it. Each state change, its audit entry and the
notice to the sender commit together. Concurrent approve and reject of one message: both move the
row only ``from held`` (``store.set_state(expect=[HELD])``), so the database lets exactly one
win; the other gets :class:`ConflictError` naming the state it found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard import audit, notify
from relayguard.auth import Role
from relayguard.config import Settings
from relayguard.errors import ConflictError, NotFound, PermissionDenied
from relayguard.store import State, Store, StoredMessage, User
from relayguard.store import tables as t

SYSTEM_ACTOR = "relayguard"
DIGEST_EVERY = 24 * 3600.0
_MAX_TEXT = 2000  # reasons and justifications: enough to explain, not a place to paste records


def _role(name: str) -> Role:
    try:
        return Role(name)
    except ValueError:
        return Role.ADMIN  # an unknown role in a rule is read as the strictest one: fail safe


def is_own(user: User, message: StoredMessage) -> bool:
    """True when ``user`` is the message's submitter (SMTP account or envelope sender)."""
    mine = {user.name.casefold()}
    if user.email:
        mine.add(user.email.casefold())
    return bool(mine & {message.submitter.name.casefold(), message.envelope.mail_from.casefold()})


def check_reviewer(user: User, message: StoredMessage, *, verb: str) -> None:
    """Raise :class:`PermissionDenied` unless ``user`` may approve or reject ``message``."""
    needed = _role(message.decision.approver_role) if verb == "approve" else Role.REVIEWER
    if not _role(user.role).at_least(needed):
        raise PermissionDenied(f"{user.name} has the {user.role} role; to {verb} this message "
                               f"needs {needed.value}")
    if is_own(user, message):
        raise PermissionDenied(f"four-eyes rule: {user.name} submitted message {message.id}, "
                               f"so a second person must {verb} it")


def _clip(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError(f"a {what} is required")
    return text[:_MAX_TEXT]


async def _move_held(conn: AsyncConnection, store: Store, queue_id: str, to: State, *, verb: str,
                     user: User | None = None) -> StoredMessage:
    """Check and move one held message to ``to`` inside ``conn``; the loser of a race conflicts.

    The state is read through ``conn`` first: on SQLite the transaction holds the write lock, so
    this read is authoritative, and a second connection (which ``set_state`` opens to explain a
    failure) would wait on our own lock. On PostgreSQL the guarded UPDATE takes the row lock and
    re-checks ``held`` after any concurrent writer commits.
    """
    message = await store.get(queue_id, with_raw=False, conn=conn)
    if user is not None:
        check_reviewer(user, message, verb=verb)
    if message.state is not State.HELD:
        raise ConflictError(f"cannot {verb}: message {queue_id} is {message.state.value}, not held")
    try:
        await store.set_state(queue_id, to, expect=[State.HELD], conn=conn)
    except ConflictError as exc:
        raise ConflictError(f"cannot {verb}: {exc}") from exc
    return message


async def _approvers(conn: AsyncConnection, queue_id: str) -> list[str]:
    rows = await conn.execute(select(t.approvals.c.reviewer).where(t.approvals.c.message_id == queue_id))
    return [str(r[0]) for r in rows]


@dataclass(frozen=True, slots=True)
class ApproveResult:
    state: State  # HELD while more approvals are needed, QUEUED once released
    approvals: int
    required: int


async def approve(store: Store, settings: Settings, queue_id: str, user: User, *,
                  via: str = "web") -> ApproveResult:
    """Record ``user``'s approval; the last one needed releases the message for delivery."""
    async with store.begin() as conn:
        # held → held: takes the row lock so a concurrent reject waits for this transaction.
        message = await _move_held(conn, store, queue_id, State.HELD, verb="approve", user=user)
        already = await _approvers(conn, queue_id)
        if user.name in already:
            raise PermissionDenied(f"{user.name} has already approved {queue_id}; "
                                   "another reviewer must give the next approval")
        now = store.clock.now()
        try:
            await conn.execute(insert(t.approvals).values(message_id=queue_id, reviewer=user.name, at=now))
        except IntegrityError as exc:  # the same reviewer approving twice at once
            raise ConflictError(f"{user.name} has already approved {queue_id}") from exc
        count, required = len(already) + 1, max(1, message.decision.approvals_required)
        final = count >= required
        if final:
            await store.set_state(queue_id, State.APPROVED, expect=[State.HELD], conn=conn)
            await store.set_state(queue_id, State.QUEUED, expect=[State.APPROVED], conn=conn,
                                  next_attempt_at=now)
            await notify.to_sender(conn, store, settings, message, outcome="released")
        await audit.append(conn, at=now, actor=user.name, action=audit.AuditAction.APPROVED, obj=queue_id,
                           details={"via": via, "approvals": count, "required": required,
                                    "released": final})
    return ApproveResult(State.QUEUED if final else State.HELD, count, required)


async def reject(store: Store, settings: Settings, queue_id: str, user: User, *, reason: str,
                 via: str = "web") -> None:
    """Reject a held message for good, with a reason the sender is told."""
    reason = _clip(reason, "reason")
    async with store.begin() as conn:
        message = await _move_held(conn, store, queue_id, State.REJECTED, verb="reject", user=user)
        await notify.to_sender(conn, store, settings, message, outcome="rejected", detail=reason)
        await audit.append(conn, at=store.clock.now(), actor=user.name,
                           action=audit.AuditAction.REJECTED, obj=queue_id,
                           details={"via": via, "reason": reason})


async def request_release(store: Store, settings: Settings, queue_id: str, user: User, *,
                          justification: str) -> None:
    """The sender asks the reviewers to release their own held message."""
    justification = _clip(justification, "justification")
    async with store.begin() as conn:
        message = await store.get(queue_id, with_raw=False, conn=conn)
        if not is_own(user, message):
            raise PermissionDenied("only the message's sender can request its release")
        await _move_held(conn, store, queue_id, State.HELD, verb="request release")
        await notify.release_requested(conn, store, settings, message, requester=user.name,
                                       justification=justification)
        await audit.append(conn, at=store.clock.now(), actor=user.name,
                           action=audit.AuditAction.RELEASE_REQUESTED, obj=queue_id,
                           details={"justification": justification})


async def approvals(store: Store, queue_id: str) -> list[str]:
    async with store.engine.connect() as conn:
        return await _approvers(conn, queue_id)


async def user_or_fail(store: Store, name: str) -> User:
    user = await store.get_user(name)
    if user is None:
        raise NotFound(f"no user {name!r} (add one with: relayguard users add)")
    return user


# -- the sweep: expiry, reminders, digest ----------------------------------------------------

@dataclass(slots=True)
class SweepResult:
    expired: list[str] = field(default_factory=list)
    reminded: list[str] = field(default_factory=list)
    digest_sent: bool = False


async def _once(conn: AsyncConnection, key: str, now: float, *, every: float | None = None) -> bool:
    """True the first time ``key`` is seen (or once per ``every`` seconds); shared by instances."""
    row = (await conn.execute(select(t.alert_state.c.last_at).where(t.alert_state.c.key == key))).first()
    if row is not None and (every is None or now - float(row[0]) < every):
        return False
    if row is None:
        await conn.execute(insert(t.alert_state).values(key=key, last_at=now, details="{}"))
    else:
        await conn.execute(t.alert_state.update().where(t.alert_state.c.key == key).values(last_at=now))
    return True


async def _expire(store: Store, settings: Settings, message: StoredMessage) -> bool:
    async with store.begin() as conn:
        try:
            await _move_held(conn, store, message.id, State.EXPIRED, verb="expire")
        except ConflictError:
            return False  # reviewed meanwhile: nothing to expire
        await notify.to_sender(conn, store, settings, message, outcome="expired")
        await audit.append(conn, at=store.clock.now(), actor=SYSTEM_ACTOR,
                           action=audit.AuditAction.EXPIRED, obj=message.id,
                           details={"held_for_s": round(store.clock.now() - message.created_at)})
    return True


async def _remind(store: Store, settings: Settings, message: StoredMessage, expires_at: float) -> bool:
    async with store.begin() as conn:
        if not await _once(conn, f"quarantine-remind:{message.id}", store.clock.now()):
            return False
        await notify.reminder(conn, store, settings, message, expires_at=expires_at)
        await audit.append(conn, at=store.clock.now(), actor=SYSTEM_ACTOR,
                           action=audit.AuditAction.REMINDED, obj=message.id,
                           details={"expires_at": expires_at})
    return True


async def sweep(store: Store, settings: Settings) -> SweepResult:
    """Expire overdue holds, remind before expiry, send the daily digest (call every minute)."""
    result = SweepResult()
    now = store.clock.now()
    expire_after = settings.quarantine.expire_after.total_seconds()
    remind_at = expire_after - settings.quarantine.remind_before.total_seconds()
    held = await store.list_messages(states=[State.HELD], limit=100_000, newest_first=False)
    waiting = []
    for message in held:
        age = now - message.created_at
        if age >= expire_after:
            if await _expire(store, settings, message):
                result.expired.append(message.id)
            continue
        waiting.append(message)
        if age >= remind_at and await _remind(store, settings, message, message.created_at + expire_after):
            result.reminded.append(message.id)
    if waiting and settings.quarantine.reviewers:
        async with store.begin() as conn:
            if await _once(conn, "quarantine-digest", now, every=DIGEST_EVERY):
                await notify.digest(conn, store, settings, waiting)
                result.digest_sent = True
    return result
