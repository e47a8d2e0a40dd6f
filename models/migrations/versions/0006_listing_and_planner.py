"""runs.list_cursor / list_state: a run whose accounts are listed from the
source keeps the listing's cursor after its last stored page, so a planning
cut off mid-listing carries on there; runs.planner / planner_seen_at: the
process planning the run and its heartbeat, so `resume` takes over only
from a planner that is gone.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
import sqlmodel
import sqlmodel.sql.sqltypes  # AutoString; imported by sqlmodel too, named here for the type checker
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("list_cursor", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("list_state", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("planner", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("planner_seen_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("planner_seen_at")
        batch_op.drop_column("planner")
        batch_op.drop_column("list_state")
        batch_op.drop_column("list_cursor")
