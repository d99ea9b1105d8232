"""trigram indexes for search (PostgreSQL)

`q` is a case-insensitive substring match (ILIKE '%text%'), which a b-tree cannot help with. pg_trgm's
GIN indexes answer it from the trigrams of the search text, so a search costs what its matches cost,
not what the user's whole list costs. SQLite has no such index: there the statement time limit bounds
a search (app/statement_limits.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {"ix_tasks_title_trgm": "title", "ix_tasks_description_trgm": "description"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Needs CREATE on the database (the owner has it; on Neon the default role does).
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, column in _INDEXES.items():
        op.create_index(name, "tasks", [column], postgresql_using="gin", postgresql_ops={column: "gin_trgm_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in _INDEXES:
        op.drop_index(name, table_name="tasks")
