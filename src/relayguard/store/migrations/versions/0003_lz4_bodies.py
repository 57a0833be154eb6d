"""PostgreSQL: message bytes compressed with lz4 rather than pglz, where the server has lz4.

PostgreSQL compresses every value over ~2 KB it stores out of line (TOAST), by default with its
own pglz: 1.6 ms of the server's CPU for each 100 KiB message, more than half of what the relay
itself spends on it. lz4 does the same job in a third of that (bench/RESULTS.md, notes). Only
values written from now on are affected; SQLite stores bytes as they are, so nothing changes there.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = (("message_bodies", "raw"), ("capture", "raw"))


def _set_compression(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        # A server built without lz4 refuses it (feature_not_supported): the column keeps pglz,
        # which works, and says so in its log rather than failing the upgrade.
        op.execute(f"""
            DO $$ BEGIN
                ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method};
            EXCEPTION WHEN feature_not_supported THEN
                RAISE WARNING 'relayguard: {table}.{column} keeps the default compression (%)', SQLERRM;
            END $$""")


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("default")
