"""Alembic environment: always driven programmatically by ``relayguard.store.migrate``.

The caller hands over a live synchronous connection (from ``AsyncConnection.run_sync``) so the
same code path migrates SQLite and PostgreSQL, and tests can migrate a private schema.
"""

from alembic import context

from relayguard.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  version_table_schema=context.config.attributes.get("schema"))
with context.begin_transaction():
    context.run_migrations()
