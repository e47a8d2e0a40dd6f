"""Alembic environment: migrations run on the connection make_engine hands over."""

from alembic import context
from sqlmodel import SQLModel

from imshift.models import tables  # noqa: F401  (fills the metadata)

connection = context.config.attributes["connection"]
# Batch mode lets SQLite alter tables (it has no ALTER COLUMN).
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
