"""The audit trail: an append-only, hash-chained record of who did what to which message.

Each entry's ``hash`` is ``sha256(prev_hash + canonical_json(entry))`` where the entry is
``{seq, at, actor, action, object, details}``; the first entry chains from 64 zeros. Editing,
deleting or reordering any entry breaks every hash after it, which :func:`verify` reports.

:func:`append` runs inside the caller's transaction so that a decision and its audit entry commit
together or not at all. The entry takes its place in the chain at the commit, after the chain's
last entry is read there (``store.deferred.chain_at_commit``). Appends are serialised from that
read to the commit: on SQLite by its write lock (one writer at a time); on PostgreSQL by a
transaction-scoped advisory lock that makes concurrent relay instances queue up behind each
other, so two entries never share a ``prev_hash``.

Details must never hold raw identifiers or message bodies: callers pass findings through
``Finding.public()`` (masked), and :func:`append` masks anything shaped like a 10-digit health
identifier as a last line of defence.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard.store import Store
from relayguard.store import tables as t
from relayguard.store.deferred import Chain, chain_at_commit

GENESIS = "0" * 64
# Any constant will do; it only has to differ from the other advisory locks (migrate uses 4242001).
_PG_LOCK = 4242002
# NHS / CHI / H&C numbers: 10 digits, optionally grouped 3-3-4. Bounded by non-alphanumerics so
# hex queue ids, which may contain long digit runs, are left alone.
_TEN_DIGITS = re.compile(r"(?<![0-9A-Za-z])\d{3}[ -]?\d{3}[ -]?\d{4}(?![0-9A-Za-z])")


class AuditAction(StrEnum):
    DECIDED = "decided"
    HELD = "held"
    VIEWED = "viewed"
    UNMASKED = "unmasked"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    POLICY_RELOADED = "policy_reloaded"
    USER_ADDED = "user_added"
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    PURGED = "purged"
    RELEASE_REQUESTED = "release_requested"
    REMINDED = "reminded"
    ESCALATED = "escalated"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    at: float
    actor: str
    action: str
    object: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "actor": self.actor, "action": self.action,
                "object": self.object, "details": self.details, "prev_hash": self.prev_hash,
                "hash": self.hash}


def canonical_json(data: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: one byte string per value, on every platform."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev_hash: str, *, seq: int, at: float, actor: str, action: str, obj: str,
               details: dict[str, Any]) -> str:
    body = {"seq": seq, "at": at, "actor": actor, "action": action, "object": obj, "details": details}
    return hashlib.sha256((prev_hash + canonical_json(body)).encode("utf-8")).hexdigest()


def _scrub(value: Any) -> Any:
    """Mask identifier-shaped digit runs anywhere in ``value`` (defence in depth, not the filter)."""
    if isinstance(value, str):
        return _TEN_DIGITS.sub("**********", value)
    if isinstance(value, dict):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _link(last: Any, rows: list[dict[str, Any]]) -> None:
    """Give queued entries (``chain_at_commit``) their seq, prev_hash and hash, in order, after
    the chain's last entry ``last`` (None when the trail is empty)."""
    seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
    for row in rows:
        digest = entry_hash(prev, seq=seq, at=row["at"], actor=row["actor"], action=row["action"],
                            obj=row["object"], details=json.loads(row["details"]))
        row.update(seq=seq, prev_hash=prev, hash=digest)
        seq, prev = seq + 1, digest


# Appenders are serialised from the chain's tail read to the commit: on SQLite by its write lock,
# on PostgreSQL by a transaction-scoped advisory lock taken first.
_CHAIN = Chain(t.audit, select(t.audit.c.seq, t.audit.c.hash).order_by(t.audit.c.seq.desc()).limit(1),
               _link, lock_sql={"postgresql": f"SELECT pg_advisory_xact_lock({_PG_LOCK})"})


async def append(conn: AsyncConnection, *, at: float, actor: str, action: str, obj: str = "",
                 details: dict[str, Any] | None = None) -> None:
    """Add one entry to the chain inside the caller's transaction (``conn`` from ``store.begin()``).

    Its place in the chain is taken at the commit, so the chain is locked only from then on
    (deferred.chain_at_commit); in a transaction not opened by the store, at once."""
    # The hash is computed over the details as stored (canonical JSON read back), whenever it is.
    await chain_at_commit(conn, _CHAIN, {
        "seq": None, "at": at, "actor": actor, "action": str(action), "object": obj,
        "details": canonical_json(_scrub(details or {})), "prev_hash": None, "hash": None})


async def entries(store: Store, *, obj: str | None = None, action: str | None = None,
                  limit: int | None = None, newest_first: bool = False) -> list[Entry]:
    """Entries in chain order (or newest first), optionally for one object or action."""
    stmt = select(*t.audit.c)
    if obj is not None:
        stmt = stmt.where(t.audit.c.object == obj)
    if action is not None:
        stmt = stmt.where(t.audit.c.action == action)
    stmt = stmt.order_by(t.audit.c.seq.desc() if newest_first else t.audit.c.seq)
    if limit is not None:
        stmt = stmt.limit(limit)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).fetchall()
    return [_entry(r._mapping) for r in rows]


def _entry(m: Any) -> Entry:
    try:
        details = json.loads(m["details"])
    except ValueError:
        details = {"unparseable": True}
    return Entry(seq=int(m["seq"]), at=float(m["at"]), actor=m["actor"], action=m["action"],
                 object=m["object"], details=details if isinstance(details, dict) else {},
                 prev_hash=m["prev_hash"], hash=m["hash"])


def _check(rows: list[Any]) -> Iterator[tuple[int, str]]:
    """Yield (seq, reason) for every break in the chain, first one first."""
    prev, expected_seq = GENESIS, 1
    for m in rows:
        seq = int(m["seq"])
        if seq != expected_seq:
            yield seq, f"sequence gap: expected entry {expected_seq}, found {seq} (entries deleted?)"
        if m["prev_hash"] != prev:
            yield seq, "prev_hash does not match the previous entry's hash"
        try:
            details = json.loads(m["details"])
        except ValueError:
            yield seq, "details are not valid JSON"
            details = m["details"]
        want = entry_hash(m["prev_hash"], seq=seq, at=float(m["at"]), actor=m["actor"],
                          action=m["action"], obj=m["object"], details=details)
        if want != m["hash"]:
            yield seq, "hash does not match the entry's content (entry edited)"
        prev, expected_seq = m["hash"], seq + 1


async def verify(store: Store) -> tuple[bool, int | None, str]:
    """``(True, None, summary)`` when the chain is intact, else ``(False, seq, reason)``."""
    async with store.engine.connect() as conn:
        rows = [r._mapping for r in (await conn.execute(
            select(*t.audit.c).order_by(t.audit.c.seq))).fetchall()]
    for seq, reason in _check(rows):
        return False, seq, reason
    return True, None, f"{len(rows)} entries, chain intact"


async def export(store: Store, out: IO[str]) -> int:
    """Write every entry as one JSON line (chain order); returns how many were written."""
    written = 0
    for entry in await entries(store):
        out.write(canonical_json(entry.to_json()) + "\n")
        written += 1
    return written
