"""Job, run and schedule ids are never reused: on SQLite the three tables
are rebuilt with AUTOINCREMENT (a removed job's id was taken by the next
one, so `results 1` could show another job). PostgreSQL's sequences never
reuse an id: nothing to do there.

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("runs", "jobs", "schedules")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:  # the copy keeps every id, and AUTOINCREMENT starts past the highest
        with op.batch_alter_table(table, recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always"):
            pass
