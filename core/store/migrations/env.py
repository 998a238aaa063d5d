"""Alembic's environment for the store: always run on the connection `Store.open` passes in."""

from __future__ import annotations

from alembic import context

from mailgate.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the store's migrations run through mailgate.store.Store.open")
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
