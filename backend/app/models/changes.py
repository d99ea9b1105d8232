"""The change feed's tables: each owner's change counter, and the tombstones of deleted tasks."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, String, Uuid
from sqlmodel import Field, SQLModel

from app.columns import USER_ID_MAX, UTCTimestamp, table_metadata

table_metadata()


class ChangeCounter(SQLModel, table=True):
    """One row per owner: the last change number handed out, and what purging tombstones removed.

    Every write of the owner's tasks increments `seq` in the writing transaction, so the row lock
    orders that owner's writers (app/services/changes.py).
    """

    __tablename__ = "change_counters"

    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger(), nullable=False))
    # The highest change number of a purged tombstone: cursors before it are answered 410.
    purged_seq: int = Field(default=0, sa_column=Column(BigInteger(), nullable=False, server_default="0"))
    # When the oldest tombstone passes the retention (None: no tombstones), so writes purge only then.
    purge_due_at: datetime | None = Field(default=None, sa_column=Column(UTCTimestamp(), nullable=True))


class TaskTombstone(SQLModel, table=True):
    """A deleted task, kept for the retention (SYNC_TOMBSTONE_DAYS) so feeds can report the delete."""

    __tablename__ = "task_tombstones"
    __table_args__ = (
        Index("ix_task_tombstones_user_id_seq", "user_id", "seq"),
        Index("ix_task_tombstones_user_id_deleted_at", "user_id", "deleted_at"),
    )

    id: uuid.UUID = Field(sa_column=Column(Uuid(), primary_key=True))
    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), nullable=False))
    seq: int = Field(sa_column=Column(BigInteger(), nullable=False))
    deleted_at: datetime = Field(sa_column=Column(UTCTimestamp(), nullable=False))
