"""The `tasks` table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, Column, DateTime, Index, Integer, String, Text, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Names for constraints and indexes, so Alembic migrations are deterministic on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


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


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are stored as UTC and
    made aware again on the way out (UTC text sorts chronologically, so ORDER BY stays correct).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(m.value) for m in enum)})"


def unstorable_reason(value: str) -> str | None:
    """Why `value` cannot be stored as text on both databases, or None if it can.

    PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    """
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


TITLE_MAX = 255
DESCRIPTION_MAX = 10_000
USER_ID_MAX = 255


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
    due_date: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    version: int = Field(default=1, sa_column=Column(Integer(), nullable=False, server_default="1"))
