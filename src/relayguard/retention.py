"""Retention: the bodies of finished mail are dropped after ``retention.purge_after`` (default 7 days).

The relay must not become a second store of patient data. Delivered, bounced, rejected, expired
and refused mail loses ``messages.raw`` once it has been in that state for ``purge_after``;
metadata, the decision and the audit trail stay, so reports, alerts and ``audit verify`` still
work. Mail that still has work to do (queued, held, approved) is never purged.

Each run purges at most ``BATCH`` bodies in one transaction with ONE audit entry (``purged``,
the count and the first and last queue id); a backlog is worked off over the following runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayguard import audit
from relayguard.config import Settings
from relayguard.log import get_logger
from relayguard.store import Store, ops

log = get_logger("relayguard.retention")

BATCH = 5000  # bodies per run: bounds one transaction's size and lock time
SYSTEM_ACTOR = "relayguard"


@dataclass(frozen=True, slots=True)
class PurgeResult:
    count: int
    first_id: str | None = None
    last_id: str | None = None


async def purge(store: Store, settings: Settings, *, limit: int = BATCH) -> PurgeResult:
    """Purge the bodies now due; audited as one entry when anything was purged."""
    now = store.clock.now()
    before = now - settings.retention.purge_after.total_seconds()
    async with store.begin() as conn:
        ids = await ops.purge_bodies(conn, before=before, now=now, limit=limit)
        if not ids:
            return PurgeResult(0)
        await audit.append(conn, at=now, actor=SYSTEM_ACTOR, action=audit.AuditAction.PURGED,
                           obj=f"{ids[0]}..{ids[-1]}",
                           details={"count": len(ids), "first_id": ids[0], "last_id": ids[-1],
                                    "purge_after_s": settings.retention.purge_after.total_seconds()})
    log.info("retention.purged", count=len(ids), first_id=ids[0], last_id=ids[-1])
    return PurgeResult(len(ids), ids[0], ids[-1])
