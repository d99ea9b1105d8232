"""The `tasks` table."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import TypedDict

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Integer, String, Text, Uuid
from sqlmodel import Field, SQLModel

from app.columns import TITLE_MAX, USER_ID_MAX, UTCTimestamp, table_metadata

table_metadata()


class TaskStatus(StrEnum):
    """Where a task stands."""

    pending = "pending"
    in_progress = "in_progress"
    completed = "completed"


class TaskPriority(StrEnum):
    """How urgent a task is; sorts low < medium < high."""

    low = "low"
    medium = "medium"
    high = "high"


def _in(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(m.value) for m in enum)})"


class Task(SQLModel, table=True):
    """One user's task. `version` increments on every write and is the ETag."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_in("status", TaskStatus), name="status"),
        CheckConstraint(_in("priority", TaskPriority), name="priority"),
        # Every list query filters by owner first; the trailing id keeps pagination stable.
        Index("ix_tasks_user_id_created_at", "user_id", "created_at", "id"),
        Index("ix_tasks_user_id_updated_at", "user_id", "updated_at", "id"),
        Index("ix_tasks_user_id_due_date", "user_id", "due_date", "id"),
        Index("ix_tasks_user_id_status_created_at", "user_id", "status", "created_at", "id"),
        # The change feed reads an owner's tasks changed after a cursor (app/services/changes.py).
        Index("ix_tasks_user_id_seq", "user_id", "seq"),
    )

    id: uuid.UUID = Field(sa_column=Column(Uuid(), primary_key=True))
    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), nullable=False))
    title: str = Field(sa_column=Column(String(TITLE_MAX), nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    status: str = Field(
        default=TaskStatus.pending.value,
        sa_column=Column(String(16), nullable=False, server_default=TaskStatus.pending.value),
    )
    priority: str = Field(
        default=TaskPriority.medium.value,
        sa_column=Column(String(8), nullable=False, server_default=TaskPriority.medium.value),
    )
    due_date: datetime | None = Field(default=None, sa_column=Column(UTCTimestamp(), nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCTimestamp(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCTimestamp(), nullable=False))
    version: int = Field(default=1, sa_column=Column(Integer(), nullable=False, server_default="1"))
    # The owner's change number of the last write (app/services/changes.py); no default on purpose.
    seq: int = Field(sa_column=Column(BigInteger(), nullable=False))


# The public fields of a task, in the order the API shows them (everything but `version`).
TASK_FIELDS = ("id", "title", "description", "status", "priority", "due_date", "user_id", "created_at", "updated_at")


class TaskRow(TypedDict):
    """A stored task as the services hand it out: the public fields, typed as read from the table."""

    id: uuid.UUID
    title: str
    description: str | None
    status: str
    priority: str
    due_date: datetime | None
    user_id: str
    created_at: datetime
    updated_at: datetime
