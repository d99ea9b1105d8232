"""create tasks

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from app.columns import UTCTimestamp

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("priority", sa.String(length=8), server_default="medium", nullable=False),
        sa.Column("due_date", UTCTimestamp(), nullable=True),
        sa.Column("created_at", UTCTimestamp(), nullable=False),
        sa.Column("updated_at", UTCTimestamp(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.CheckConstraint("status IN ('pending', 'in_progress', 'completed')", name=op.f("ck_tasks_status")),
        sa.CheckConstraint("priority IN ('low', 'medium', 'high')", name=op.f("ck_tasks_priority")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_user_id_created_at", "tasks", ["user_id", "created_at", "id"])
    op.create_index("ix_tasks_user_id_updated_at", "tasks", ["user_id", "updated_at", "id"])
    op.create_index("ix_tasks_user_id_due_date", "tasks", ["user_id", "due_date", "id"])
    op.create_index("ix_tasks_user_id_status_created_at", "tasks", ["user_id", "status", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("tasks")
