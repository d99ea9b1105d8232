"""What every table shares: the metadata's naming convention, the UTC timestamp column type, the
length limits of stored identifiers and text, and the check for text both databases can store.

Models, schemas and token verification import these, so a limit or rule is stated once. This module
knows no table and no request.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

# Names for constraints and indexes, so Alembic migrations are deterministic on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def table_metadata() -> MetaData:
    """The metadata every table is defined on, with the naming convention applied.

    SQLModel keeps one global MetaData; each model module calls this before declaring its table,
    so the convention is in place whichever module is imported first.
    """
    metadata = SQLModel.metadata
    metadata.naming_convention = NAMING_CONVENTION
    return metadata


# Length limits of what the tables hold (the schemas and token checks enforce the same numbers).
USER_ID_MAX = 255
TITLE_MAX = 255
DESCRIPTION_MAX = 10_000


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


class UTCTimestamp(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp column on every database.

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

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None] | None:
        """None on PostgreSQL: asyncpg already returns `timestamptz` as an aware UTC datetime, and a
        page of tasks would otherwise call the converter three times a row for nothing.
        """
        if dialect.name == "postgresql" and dialect.driver == "asyncpg":
            return None
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
