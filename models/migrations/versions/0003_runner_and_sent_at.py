"""jobs.runner, jobs.runner_seen_at: the in-process runner of an embedded
job and its last heartbeat; items.sent_at: when a send's call was let go.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
import sqlmodel
import sqlmodel.sql.sqltypes  # AutoString; imported by sqlmodel too, named here for the type checker
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("runner", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("runner_seen_at", sa.Float(), nullable=True))
    with op.batch_alter_table("items") as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch_op:
        batch_op.drop_column("sent_at")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("runner_seen_at")
        batch_op.drop_column("runner")
