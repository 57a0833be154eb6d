"""Prometheus metrics: one registry per :class:`~relayguard.app.Relay` (tests run several in-process).

Two kinds of figure, on purpose:

- **This instance's events** are ordinary counters and histograms, incremented where the event
  happens: ``relayguard_accepted_total``, ``…_rejected_total``, ``…_held_total``,
  ``…_delivered_total{origin}``, ``…_deferred_total``, ``…_bounced_total{origin,reason}``,
  ``…_alerts_total{kind}``,
  ``relayguard_decision_seconds``, ``relayguard_accept_seconds``. With several instances, each is
  scraped and the figures are summed (``sum without(instance)``), the Prometheus convention.
- **The shared store's state** is read from the database at scrape time, so every instance reports
  the same, cluster-wide figure (take ``max``, not ``sum``): ``relayguard_messages{origin,state}``,
  ``relayguard_released_messages`` (held mail let go, whoever approved it: web, CLI, another
  instance), ``relayguard_queue_depth`` and ``relayguard_oldest_queued_age_seconds``. Releases are
  only counted this way because approvals happen in other processes (the CLI) that are never
  scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from relayguard.decision import Action
from relayguard.delivery import Outcome
from relayguard.store import State, Store, StoredMessage, ops

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Scanning a letter takes milliseconds; a zip of spreadsheets can take the whole scan budget.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)


def bounce_reason(outcome: Outcome) -> str:
    """``max_age`` when the relay gave up on a deferred recipient, else ``5xx`` (a refusal)."""
    replies = [str(r.get("reply", "")) for r in outcome.newly_failed.values()]
    return "max_age" if any(r.startswith("gave up after") for r in replies) else "5xx"


class Metrics:
    """The relay's figures; ``await render(store)`` gives the text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("relayguard_accepted", "Messages answered 250 (queued or held)",
                                registry=r)
        self.rejected = Counter("relayguard_rejected", "Messages refused by policy (550)", registry=r)
        self.held = Counter("relayguard_held", "Messages held for review on arrival", registry=r)
        self.delivered = Counter("relayguard_delivered", "Messages delivered upstream", ["origin"],
                                 registry=r)
        self.deferred = Counter("relayguard_deferred", "Attempts that left a message queued for retry",
                                registry=r)
        self.bounced = Counter("relayguard_bounced", "Messages bounced", ["origin", "reason"], registry=r)
        self.alerts = Counter("relayguard_alerts", "Alerts raised", ["kind"], registry=r)
        self.decision_seconds = Histogram("relayguard_decision_seconds",
                                          "Policy decision (parse, extract, detect) per message",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.accept_seconds = Histogram("relayguard_accept_seconds",
                                        "End of DATA to committed (decision + store transaction)",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.messages = Gauge("relayguard_messages", "Messages in the shared store",
                              ["origin", "state"], registry=r)
        self.released = Gauge("relayguard_released_messages",
                               "Held client messages released (shared store)", registry=r)
        self.queue_depth = Gauge("relayguard_queue_depth", "Messages queued for delivery (shared store)",
                                 registry=r)
        self.oldest_age = Gauge("relayguard_oldest_queued_age_seconds",
                                "Age of the oldest queued message (shared store)", registry=r)
        self.store_up = Gauge("relayguard_store_up", "1 when the last scrape could read the store",
                              registry=r)

    # -- events, called where they happen ---------------------------------------------------

    def on_decided(self, action: Action, *, accept_s: float) -> None:
        """One message committed: count it by decision and time end of DATA → commit."""
        self.accept_seconds.observe(accept_s)
        if action is Action.REJECT:
            self.rejected.inc()
            return
        self.accepted.inc()
        if action is Action.HOLD:
            self.held.inc()

    def on_outcome(self, msg: StoredMessage, outcome: Outcome) -> None:
        """One delivery attempt committed (DeliveryWorker hook)."""
        if outcome.state is State.DELIVERED:
            self.delivered.labels(origin=msg.origin).inc()
        elif outcome.state is State.BOUNCED:
            self.bounced.labels(origin=msg.origin, reason=bounce_reason(outcome)).inc()
        elif outcome.state is State.QUEUED:
            self.deferred.inc()

    # -- the store, read at scrape time -----------------------------------------------------

    async def refresh(self, store: Store) -> None:
        """Set the store-derived gauges; a store outage shows as ``relayguard_store_up 0``."""
        try:
            counts = await ops.message_counts(store)
            stats = await store.queue_stats()
        except Exception:  # noqa: BLE001 - /metrics must still answer when the store is down
            self.store_up.set(0)
            return
        self.store_up.set(1)
        self.messages.clear()
        totals: dict[tuple[str, str], int] = {}
        released = 0
        for row in counts:
            totals[(row.origin, row.state)] = totals.get((row.origin, row.state), 0) + row.count
            if (row.origin == "client" and row.action == Action.HOLD.value
                    and row.state in ops.RELEASED_STATES):
                released += row.count
        for (origin, state), n in totals.items():
            self.messages.labels(origin=origin, state=state).set(n)
        self.released.set(released)
        self.queue_depth.set(stats["counts"].get(State.QUEUED.value, 0))
        self.oldest_age.set(stats["oldest_queued_age"])

    async def render(self, store: Store) -> bytes:
        await self.refresh(store)
        return bytes(generate_latest(self.registry))
