"""The `idempotency_keys` table: one row per (user, Idempotency-Key) for safe POST retries."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Column, Index, PrimaryKeyConstraint, String, Text, Uuid
from sqlmodel import Field, SQLModel

from app.columns import USER_ID_MAX, UTCTimestamp, table_metadata

table_metadata()

IDEMPOTENCY_KEY_MAX = 255


class IdempotencyKey(SQLModel, table=True):
    """The first response to a keyed POST, replayed to retries with the same key and body."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "key"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), nullable=False))
    key: str = Field(sa_column=Column(String(IDEMPOTENCY_KEY_MAX), nullable=False))
    # SHA-256 of the canonical request body: the same key with another body is a client error.
    fingerprint: str = Field(sa_column=Column(String(64), nullable=False))
    task_id: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid(), nullable=True))
    etag: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    response_body: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCTimestamp(), nullable=False))
