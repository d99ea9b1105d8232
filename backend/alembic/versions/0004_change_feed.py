"""change feed: per-owner change numbers, tombstones, and each owner's counter row

Every write stamps the task (or, for a delete, its tombstone) with the next number of its owner's
sequence, taken from the owner's row in `change_counters` (app/services/changes.py explains why
that row lock makes the feed skip nothing). Existing tasks are numbered per owner in the order they
were last updated, and each owner's counter starts at their highest number.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from app.columns import UTCTimestamp

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "change_counters",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("purged_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("purge_due_at", UTCTimestamp(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_change_counters")),
    )
    op.create_table(
        "task_tombstones",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", UTCTimestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_tombstones")),
    )
    op.create_index("ix_task_tombstones_user_id_seq", "task_tombstones", ["user_id", "seq"])
    op.create_index("ix_task_tombstones_user_id_deleted_at", "task_tombstones", ["user_id", "deleted_at"])

    # Added with a default so existing rows get a value, numbered below, then the default is dropped:
    # a row written without a change number would be invisible to the feed.
    op.add_column("tasks", sa.Column("seq", sa.BigInteger(), server_default="0", nullable=False))
    op.execute(
        "UPDATE tasks SET seq = numbered.n FROM ("
        " SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY updated_at, id) AS n FROM tasks"
        ") AS numbered WHERE tasks.id = numbered.id"
    )
    op.execute(
        "INSERT INTO change_counters (user_id, seq, purged_seq) SELECT user_id, max(seq), 0 FROM tasks GROUP BY user_id"
    )
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("seq", server_default=None, existing_type=sa.BigInteger(), existing_nullable=False)
    op.create_index("ix_tasks_user_id_seq", "tasks", ["user_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_tasks_user_id_seq", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("seq")
    op.drop_table("task_tombstones")
    op.drop_table("change_counters")
