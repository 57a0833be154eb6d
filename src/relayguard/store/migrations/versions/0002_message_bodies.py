"""Message bytes in their own table, message_bodies (see relayguard.store.tables).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_bodies",
        sa.Column("id", sa.String(32), sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )
    op.execute("INSERT INTO message_bodies (id, raw) SELECT id, raw FROM messages WHERE raw IS NOT NULL")
    # A plain ALTER TABLE ... DROP COLUMN on both backends (SQLite has it since 3.35); batch
    # mode would copy the table, which other tables' foreign keys refer to.
    op.drop_column("messages", "raw")


def downgrade() -> None:
    op.add_column("messages", sa.Column("raw", sa.LargeBinary))
    op.execute("UPDATE messages SET raw = (SELECT raw FROM message_bodies b WHERE b.id = messages.id)")
    op.drop_table("message_bodies")
