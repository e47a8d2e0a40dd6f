"""runs.group_cursor / group_state and listed_groups: a run whose groups
are listed from the source keeps each listed page, with the cursor after
it, in one transaction, so a planning cut off mid-listing carries on from
the page after the last one stored.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
import sqlmodel
import sqlmodel.sql.sqltypes  # AutoString; imported by sqlmodel too, named here for the type checker
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("group_cursor", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("group_state", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.create_table(
        "listed_groups",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("group_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("run_id", "seq"),
        sa.UniqueConstraint("run_id", "group_id", name="uq_listed_groups_run_group"),
    )


def downgrade() -> None:
    op.drop_table("listed_groups")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("group_state")
        batch_op.drop_column("group_cursor")
