"""The `task_counts` table: how many tasks each owner has per (status, priority).

Kept by triggers on `tasks` (alembic/versions/0005_task_counts.py), so `total` of an unfiltered,
status- or priority-filtered list is a sum of at most nine rows instead of a count of the owner's
tasks. Nothing in the app writes it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, PrimaryKeyConstraint, String
from sqlmodel import Field, SQLModel

from app.columns import USER_ID_MAX, table_metadata

table_metadata()


class TaskCount(SQLModel, table=True):
    """The number of the owner's tasks with this status and priority (rows may reach 0; never removed)."""

    __tablename__ = "task_counts"
    __table_args__ = (PrimaryKeyConstraint("user_id", "status", "priority"),)

    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    priority: str = Field(sa_column=Column(String(8), nullable=False))
    n: int = Field(sa_column=Column(BigInteger(), nullable=False))
