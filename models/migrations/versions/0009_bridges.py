"""bridges, bridge_messages and feed_counts: the cut-over bridge's
messages, stored before each feed delivery is answered.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
import sqlmodel
import sqlmodel.sql.sqltypes  # AutoString; imported by sqlmodel too, named here for the type checker
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "bridges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_app", S(), nullable=False),
        sa.Column("app", S(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("both_ways", sa.Boolean(), nullable=False),
        sa.Column("hold", sa.Float(), nullable=False),
        sa.Column("settle", sa.Float(), nullable=False),
        sa.Column("status", S(), nullable=False),
        sa.Column("stop_reason", S(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("relayer", S(), nullable=True),
        sa.Column("relayer_until", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "bridge_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bridge_id", sa.Integer(), nullable=False),
        sa.Column("from_app", S(), nullable=False),
        sa.Column("msg_id", S(), nullable=False),
        sa.Column("conversation", S(), nullable=False),
        sa.Column("sender", S(), nullable=False),
        sa.Column("to", S(), nullable=False),
        sa.Column("is_group", sa.Boolean(), nullable=False),
        sa.Column("sent_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", S(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("state", S(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("code", S(), nullable=True),
        sa.Column("message", S(), nullable=True),
        sa.Column("claim", S(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.Column("not_before", sa.Float(), nullable=True),
        sa.Column("target_msg_id", S(), nullable=True),
        sa.Column("target_sent_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("relayed_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["bridge_id"], ["bridges.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bridge_id", "from_app", "msg_id", name="uq_bridge_messages_msg"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_bridge_messages_work", "bridge_messages", ["bridge_id", "state", "sent_at_ms"])
    op.create_index("ix_bridge_messages_target", "bridge_messages", ["bridge_id", "target_msg_id"])
    op.create_table(
        "feed_counts",
        sa.Column("app", S(), nullable=False),
        sa.Column("name", S(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("app", "name"),
    )


def downgrade() -> None:
    op.drop_table("feed_counts")
    op.drop_index("ix_bridge_messages_target", "bridge_messages")
    op.drop_index("ix_bridge_messages_work", "bridge_messages")
    op.drop_table("bridge_messages")
    op.drop_table("bridges")
