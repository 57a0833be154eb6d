"""Initial schema: messages, users, approvals, audit, capture, alert_state.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("mail_from", sa.Text, nullable=False),
        sa.Column("rcpts", sa.Text, nullable=False),
        sa.Column("submitter", sa.Text, nullable=False),
        sa.Column("submitter_kind", sa.String(16), nullable=False),
        sa.Column("client_addr", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("raw", sa.LargeBinary),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", sa.Float),
        sa.Column("results", sa.Text, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", sa.Float),
        sa.Column("purged_at", sa.Float),
        sa.Column("alerted_at", sa.Float),
    )
    op.create_index("ix_messages_state_next", "messages", ["state", "next_attempt_at"])
    op.create_index("ix_messages_created", "messages", ["created_at"])
    op.create_index("ix_messages_submitter", "messages", ["submitter", "created_at"])
    op.create_table(
        "users",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("email", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("failed_logins", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.Float),
    )
    op.create_table(
        "approvals",
        sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("reviewer", sa.String(128), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("object", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "capture",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("mail_from", sa.Text, nullable=False),
        sa.Column("rcpts", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "alert_state",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("last_at", sa.Float, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for name in ("alert_state", "capture", "audit", "approvals", "users", "messages"):
        op.drop_table(name)
