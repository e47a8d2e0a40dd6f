"""schedules and schedule_fires: sends and broadcasts to run at a time or
on a cron expression, and each fire of one, unique per (schedule, fire time).

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel
import sqlmodel.sql.sqltypes  # AutoString; imported by sqlmodel too, named here for the type checker
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("command", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("app", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("at", sa.Float(), nullable=True),
        sa.Column("cron", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("tz", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("catch_up", sa.Float(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("schedules") as batch_op:
        batch_op.create_index("ix_schedules_due", ["status", "next_at"], unique=False)
    op.create_table(
        "schedule_fires",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("fire_at", sa.Float(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("schedule_id", "fire_at", name="uq_fires_schedule_time"),
    )
    with op.batch_alter_table("schedule_fires") as batch_op:
        batch_op.create_index(batch_op.f("ix_schedule_fires_schedule_id"), ["schedule_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("schedule_fires") as batch_op:
        batch_op.drop_index(batch_op.f("ix_schedule_fires_schedule_id"))
    op.drop_table("schedule_fires")
    with op.batch_alter_table("schedules") as batch_op:
        batch_op.drop_index("ix_schedules_due")
    op.drop_table("schedules")
