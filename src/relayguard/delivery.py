"""The delivery worker: claim queued mail with a lease, send it upstream, record the outcome.

Delivery is at-least-once: a message is marked delivered only after the upstream said 250, so a
crash between the two sends it again when its lease runs out. Per-recipient results are kept;
a retry goes only to recipients still pending. 4xx and network errors back off exponentially
until ``max_age``; 5xx and ``max_age`` end in ``bounced`` and a DSN to the envelope sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard import audit, dsn
from relayguard.config import DeliverySettings
from relayguard.decision import DELIVER_UNCHANGED, Decision, Envelope, Submitter, SubmitterKind
from relayguard.errors import DeliveryError
from relayguard.log import get_logger
from relayguard.store import State, Store, StoredMessage
from relayguard.upstream import Upstream

log = get_logger("relayguard.delivery")

# prepare(raw, decision, envelope) -> the copies to send (rewrite.apply); identity by default.
Preparer = Callable[[bytes, Decision, Envelope], list[tuple[Envelope, bytes]]]

DELIVERED, DEFERRED, FAILED = "delivered", "deferred", "failed"
# Larger messages are not handed over at acceptance: their bytes would wait in memory for a
# sender; they are claimed and read back when a sender is free.
HAND_OVER_MAX_BYTES = 1024 * 1024


def _identity(raw: bytes, decision: Decision, envelope: Envelope) -> list[tuple[Envelope, bytes]]:
    return [(envelope, raw)]


def _state_of(code: int) -> str:
    if 200 <= code < 300:
        return DELIVERED
    return FAILED if 500 <= code < 600 else DEFERRED


@dataclass
class Outcome:
    """What one attempt amounted to, ready to be committed."""

    state: State
    results: dict[str, dict[str, Any]]
    next_attempt_at: float | None
    error: str | None
    newly_failed: dict[str, dict[str, Any]] = field(default_factory=dict)


def backoff(settings: DeliverySettings, attempts: int) -> float:
    base = settings.retry_base.total_seconds()
    return float(min(base * 2 ** max(attempts - 1, 0), settings.retry_max.total_seconds()))


def settle(msg: StoredMessage, results: dict[str, dict[str, Any]], *, now: float,
           settings: DeliverySettings) -> Outcome:
    """Decide the message's next state from per-recipient results (pure)."""
    rcpts = msg.envelope.rcpt_tos
    too_old = now - msg.created_at >= settings.max_age.total_seconds()
    if too_old:
        for r in rcpts:
            if results.get(r, {}).get("state") == DEFERRED:
                results[r] = {**results[r], "state": FAILED,
                              "reply": f"gave up after {settings.max_age}: {results[r].get('reply', '')}"}
    newly_failed = {r: results[r] for r in rcpts if results.get(r, {}).get("state") == FAILED
                    and msg.results.get(r, {}).get("state") != FAILED}
    states = [results.get(r, {}).get("state", DEFERRED) for r in rcpts]
    errors = [str(results[r].get("reply")) for r in rcpts if results.get(r, {}).get("state") != DELIVERED]
    error = errors[0] if errors else None
    if DEFERRED in states:
        return Outcome(State.QUEUED, results, now + backoff(settings, msg.attempts + 1), error, newly_failed)
    final = State.DELIVERED if DELIVERED in states else State.BOUNCED
    return Outcome(final, results, None, error, newly_failed)


async def _cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any that go on: a cancel can be lost
    in asyncio.wait_for() on Python 3.11 (aiosmtplib waits for replies with it), and a sender
    that lost its cancel would wait for its next message for ever (shutdown hung)."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1)


class DeliveryWorker:
    def __init__(self, store: Store, upstream_factory: Callable[[], Upstream],
                 settings: DeliverySettings, *, prepare: Preparer | None = None,
                 hostname: str = "relayguard.localdomain", owner: str | None = None) -> None:
        self.store = store
        self.upstream_factory = upstream_factory
        self.settings = settings
        self.prepare = prepare or _identity
        self.hostname = hostname
        self.owner = owner or f"{socket.gethostname()}:{id(self):x}"
        self._wake = asyncio.Event()
        # Claimed and handed-over messages wait here for a sender. Unbounded: claims wait for
        # room (_until_room) and hand-overs are counted by reserve() before they commit.
        self._queue: asyncio.Queue[StoredMessage] = asyncio.Queue()
        self._taken = asyncio.Event()
        self._reserved = 0
        self._running = False
        self._commits: set[asyncio.Task[None]] = set()
        self._committing = asyncio.Semaphore(256)
        self.on_outcome: Callable[[StoredMessage, Outcome], None] = lambda msg, outcome: None  # metrics
        self._stopping = False

    def wake(self) -> None:
        """New mail was committed: look now rather than at the next poll."""
        self._wake.set()

    def reserve(self, size: int) -> bool:
        """A place in the send queue for a message about to be committed leased to this worker
        (Store.accept_leased); False when the queue is long, the message large (its bytes would
        wait in memory) or the worker not running: it is then committed unleased and claimed."""
        if (not self._running or self._stopping or size > HAND_OVER_MAX_BYTES
                or self._queue.qsize() + self._reserved >= 4 * self.settings.workers):
            return False
        self._reserved += 1
        return True

    def hand_over(self, msg: StoredMessage | None) -> None:
        """Fill the place reserve() kept: the committed message, or None if the commit failed."""
        self._reserved -= 1
        if msg is not None:
            self._queue.put_nowait(msg)

    async def _until_room(self, limit: int) -> None:
        while self._queue.qsize() >= limit:
            self._taken.clear()
            await self._taken.wait()

    async def run(self) -> None:
        n = self.settings.workers
        senders = [asyncio.create_task(self._sender()) for _ in range(n)]
        self._running = True
        try:
            while not self._stopping:
                await self._until_room(n * 2)  # back-pressure: claim only what senders can take
                # Cleared before the claim, not after it came back empty: a wake() for mail
                # committed while the claim ran must not be lost (it would wait a whole poll).
                self._wake.clear()
                batch = await self._claim(self.settings.batch)
                for msg in batch:
                    self._queue.put_nowait(msg)
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.poll_interval):
                            await self._wake.wait()
        finally:
            self._running = False
            await _cancelled(senders)
            # Outcomes already sent upstream: record them rather than send them again.
            await asyncio.gather(*list(self._commits), return_exceptions=True)

    async def _claim(self, limit: int) -> list[StoredMessage]:
        try:
            return await self.store.claim(self.owner, limit=limit,
                                          lease=self.settings.lease.total_seconds())
        except Exception as exc:  # noqa: BLE001 - the worker must outlive a store outage
            log.error("delivery.claim_failed", error=str(exc)[:200])
            await asyncio.sleep(self.settings.poll_interval)
            return []

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _sender(self) -> None:
        upstream = self.upstream_factory()
        try:
            while True:
                msg = await self._queue.get()
                self._taken.set()
                try:
                    await self.deliver(msg, upstream, wait=False)
                except Exception:
                    # Its lease runs out and it is tried again; the log says why.
                    log.exception("delivery.crashed", queue_id=msg.id)
        finally:
            await upstream.close()

    async def run_once(self) -> int:
        """Claim and deliver one batch in the foreground (tests, ``queue retry``)."""
        batch = await self._claim(self.settings.batch)
        upstream = self.upstream_factory()
        try:
            for msg in batch:
                await self.deliver(msg, upstream)
        finally:
            await upstream.close()
        return len(batch)

    async def deliver(self, msg: StoredMessage, upstream: Upstream, *, wait: bool = True) -> Outcome:
        """Send ``msg`` and record the outcome. With ``wait=False`` the sender goes on to its next
        message while the outcome waits for the next group commit: the lease stays ours until
        then, and a crash before it only means the message is sent again (at-least-once)."""
        started = time.perf_counter()
        results = {r: dict(v) for r, v in msg.results.items()}
        pending = {r for r in msg.envelope.rcpt_tos if results.get(r, {}).get("state") not in
                   (DELIVERED, FAILED)}
        if msg.raw is None:  # claimed without its bytes; the DSN needs them too (headers)
            msg = dataclasses.replace(msg, raw=await self.store.raw_of(msg.id))
        for envelope, data in self.prepare(msg.raw or b"", msg.decision, msg.envelope):
            rcpts = tuple(r for r in envelope.rcpt_tos if r in pending)
            if rcpts:
                results.update(await self._send_copy(upstream, Envelope(envelope.mail_from, rcpts),
                                                     data, msg.id))
        outcome = settle(msg, results, now=self.store.clock.now(), settings=self.settings)
        if wait:
            await self._commit(msg, outcome)
        else:
            await self._committing.acquire()  # bounds the outcomes waiting for a commit
            task = asyncio.create_task(self._commit(msg, outcome))
            self._commits.add(task)
            task.add_done_callback(self._commit_done)
        self.on_outcome(msg, outcome)
        log.info("delivery.attempt", queue_id=msg.id, message_id=msg.message_id,
                 attempt=msg.attempts + 1, rcpt_count=len(pending), outcome=outcome.state.value,
                 upstream_reply=(outcome.error or "250")[:120],
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return outcome

    async def _send_copy(self, upstream: Upstream, envelope: Envelope, data: bytes,
                         queue_id: str) -> dict[str, dict[str, Any]]:
        try:
            per = await upstream.send(envelope, data, queue_id=queue_id)
        except DeliveryError as exc:
            state = FAILED if exc.permanent else DEFERRED
            return {r: {"code": exc.code, "reply": str(exc), "state": state} for r in envelope.rcpt_tos}
        return {r: {"code": code, "reply": reply, "state": _state_of(code)}
                for r, (code, reply) in per.items()}

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        self._commits.discard(task)
        self._committing.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Not recorded: the lease runs out and the message is sent again.
            log.error("delivery.commit_failed", error=str(exc)[:200])

    async def _commit(self, msg: StoredMessage, outcome: Outcome) -> None:
        """The new state, its audit entry and any DSN commit together (group-committed)."""
        if not await self.store.batched(lambda conn: self._commit_in(conn, msg, outcome)):
            log.warning("delivery.lease_lost", queue_id=msg.id)

    async def _commit_in(self, conn: AsyncConnection, msg: StoredMessage, outcome: Outcome) -> bool:
        now = self.store.clock.now()
        owned = await self.store.finish_attempt(
            msg.id, self.owner, state=outcome.state, results=outcome.results,
            next_attempt_at=outcome.next_attempt_at, error=outcome.error, conn=conn)
        if not owned:
            return False
        if outcome.state in (State.DELIVERED, State.BOUNCED):
            await audit.append(conn, at=now, actor="relayguard", action=outcome.state.value,
                               obj=msg.id, details={"rcpt_count": len(msg.envelope.rcpt_tos),
                                                    "failed": len(outcome.newly_failed)})
        # Never bounce a bounce (null sender) nor our own notices.
        if outcome.newly_failed and msg.envelope.mail_from and msg.origin == "client":
            raw = dsn.build_dsn(msg, outcome.newly_failed, reporting_mta=self.hostname, now=now)
            await self.store.accept(
                raw=raw, envelope=Envelope(mail_from="", rcpt_tos=(msg.envelope.mail_from,)),
                submitter=Submitter("relayguard", SubmitterKind.USER), decision=DELIVER_UNCHANGED,
                subject="Undelivered Mail Returned to Sender", origin="dsn", conn=conn)
        return True
