"""The store's tables (SQLAlchemy Core). Times are UTC epoch seconds (float) on both backends.

Epoch floats rather than DATETIME because SQLite has no time type and a moveable test clock is
then a plain number; the web UI and CLI format them for people.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# One row per accepted (or refused) message; its bytes are in message_bodies.
messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),  # the queue id given in the 250 reply
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("origin", String(16), nullable=False, default="client"),  # client | dsn | notice | alert
    Column("mail_from", Text, nullable=False),
    Column("rcpts", Text, nullable=False),  # JSON list, the envelope as received
    Column("submitter", Text, nullable=False),
    Column("submitter_kind", String(16), nullable=False),
    Column("client_addr", Text, nullable=False, default=""),
    Column("message_id", Text, nullable=True),  # the Message-ID header, for people and logs
    Column("subject", Text, nullable=True),
    Column("size", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # see relayguard.store.states
    Column("action", String(16), nullable=False),
    Column("decision", Text, nullable=False),  # JSON of Decision.to_json()
    Column("policy_version", String(64), nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("results", Text, nullable=False, default="{}"),  # JSON {rcpt: {"code", "reply", "state"}}
    Column("last_error", Text, nullable=True),
    Column("delivered_at", Float, nullable=True),
    Column("purged_at", Float, nullable=True),
    Column("alerted_at", Float, nullable=True),
)
Index("ix_messages_state_next", messages.c.state, messages.c.next_attempt_at)
Index("ix_messages_created", messages.c.created_at)
Index("ix_messages_submitter", messages.c.submitter, messages.c.created_at)

# A message's bytes, until retention purges them (``messages.purged_at``). Apart from the row
# that changes state: SQLite writes a whole row again when any column's size changes, so a
# 25 MiB message kept with its state was copied on every claim and every delivery outcome.
message_bodies = Table(
    "message_bodies",
    metadata,
    Column("id", String(32), ForeignKey("messages.id"), primary_key=True),
    Column("raw", LargeBinary, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),  # sender | reviewer | admin
    Column("email", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", Float, nullable=True),
)

approvals = Table(
    "approvals",
    metadata,
    Column("message_id", String(32), ForeignKey("messages.id"), primary_key=True),
    Column("reviewer", String(128), primary_key=True),
    Column("at", Float, nullable=False),
)

# Append-only and hash-chained; see relayguard.audit.
audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(32), nullable=False),
    Column("object", Text, nullable=False, default=""),
    Column("details", Text, nullable=False, default="{}"),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# Dev mode: what would have gone upstream when no upstream is configured.
capture = Table(
    "capture",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("queue_id", String(32), nullable=False),
    Column("mail_from", Text, nullable=False),
    Column("rcpts", Text, nullable=False),
    Column("raw", LargeBinary, nullable=False),
)

# Alert de-duplication and other small facts that must be shared by every relay instance.
alert_state = Table(
    "alert_state",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("last_at", Float, nullable=False),
    Column("details", Text, nullable=False, default="{}"),
)
