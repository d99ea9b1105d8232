"""Request and response bodies for tasks: TaskCreate / TaskReplace / TaskPatch / TaskRead / TaskPage."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from app.models.task import DESCRIPTION_MAX, TITLE_MAX, USER_ID_MAX, TaskPriority, TaskStatus, unstorable_reason


def _storable(value: str) -> str:
    # Reject here so both databases answer the same clear 422 instead of a driver error.
    if (reason := unstorable_reason(value)) is not None:
        raise ValueError(reason)
    return value


# Characters that show nothing: separators (Z*), controls (Cc), format characters (Cf: U+200B, U+2060,
# U+FEFF, ...), and a few letters and marks that render blank (Hangul fillers, the combining grapheme
# joiner, variation selectors).
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u034f") | {chr(c) for c in range(0xFE00, 0xFE10)}


def _invisible(char: str) -> bool:
    return char.isspace() or char in _INVISIBLE or unicodedata.category(char) in _INVISIBLE_CATEGORIES


def _not_blank(value: str) -> str:
    if all(_invisible(char) for char in value):  # also true for ""
        raise ValueError("must not be blank")
    return value


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("is out of range once converted to UTC") from None


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=TITLE_MAX),
    AfterValidator(_not_blank),
    AfterValidator(_storable),
    Field(min_length=1, description="Trimmed; 1-255 characters after trimming.", examples=["Write the launch post"]),
]
Description = Annotated[
    str,
    StringConstraints(max_length=DESCRIPTION_MAX),
    AfterValidator(_storable),
    Field(examples=["Draft, review with Sam, publish on Friday"]),
]
UtcDateTime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    Field(
        description="RFC 3339 with an offset (a naive time is a 422); stored in UTC.", examples=["2026-12-01T17:00:00Z"]
    ),
]

_EXAMPLE_TASK: dict[str, Any] = {
    "id": "0b5e9a4c-2f4e-4d7b-9a53-3c1f7f0a8e21",
    "title": "Write the launch post",
    "description": "Draft, review with Sam, publish on Friday",
    "status": "in_progress",
    "priority": "high",
    "due_date": "2026-12-01T17:00:00Z",
    "user_id": "user_2x8Hk",
    "created_at": "2026-11-26T09:30:00Z",
    "updated_at": "2026-11-26T10:05:12Z",
}


class _Body(BaseModel):
    # Unknown fields (user_id, id, ...) are a 422 naming the field, never silently dropped.
    model_config = ConfigDict(extra="forbid")


class TaskCreate(_Body):
    """Body of POST /api/tasks: only `title` is required."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"title": "Write the launch post", "priority": "high"}]})

    title: Title
    description: Description | None = None
    status: TaskStatus = TaskStatus.pending
    priority: TaskPriority = TaskPriority.medium
    due_date: UtcDateTime | None = None


class TaskReplace(TaskCreate):
    """Body of PUT /api/tasks/{id}: a full replacement; omitted optional fields reset to defaults."""


class TaskPatch(_Body):
    """Body of PATCH /api/tasks/{id}: only the fields given change; `null` clears description/due_date."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "completed"}]})

    title: Title = None  # type: ignore[assignment]  # absent is allowed, explicit null is rejected below
    description: Description | None = None
    status: TaskStatus = None  # type: ignore[assignment]
    priority: TaskPriority = None  # type: ignore[assignment]
    due_date: UtcDateTime | None = None

    def changes(self) -> dict[str, Any]:
        """The fields the client actually sent, as column values."""
        return self.model_dump(exclude_unset=True)


class TaskRead(BaseModel):
    """A task as the API returns it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_TASK]})

    # Limits here document what the table holds (json_schema_extra only: nothing is re-validated).
    id: uuid.UUID
    title: str = Field(json_schema_extra={"minLength": 1, "maxLength": TITLE_MAX})
    description: str | None = Field(json_schema_extra={"maxLength": DESCRIPTION_MAX})
    status: TaskStatus
    priority: TaskPriority
    due_date: datetime | None = Field(description="In UTC (`Z`); null when the task has none.")
    user_id: str = Field(
        description="The owner: the token's `sub` (else its `user_id` claim).",
        json_schema_extra={"maxLength": USER_ID_MAX},
    )
    created_at: datetime = Field(description="In UTC (`Z`).")
    updated_at: datetime = Field(description="In UTC (`Z`); changes on every write.")


class TaskPage(BaseModel):
    """One page of the caller's tasks; `total` counts every match, not just this page."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EXAMPLE_TASK], "total": 1, "limit": 50, "offset": 0}]}
    )

    items: list[TaskRead]
    total: int = Field(ge=0)
    limit: int = Field(ge=1, le=100)
    offset: int = Field(ge=0)


class TaskSort(StrEnum):
    """Sort keys for the list; a leading `-` sorts descending."""

    created_at = "created_at"
    created_at_desc = "-created_at"
    updated_at = "updated_at"
    updated_at_desc = "-updated_at"
    due_date = "due_date"
    due_date_desc = "-due_date"
    priority = "priority"
    priority_desc = "-priority"
    title_asc = "title"
    title_desc = "-title"


class TaskListQuery(BaseModel):
    """Query parameters of GET /api/tasks."""

    model_config = ConfigDict(extra="forbid")

    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    due_before: UtcDateTime | None = Field(default=None, description="Only tasks due strictly before this instant.")
    due_after: UtcDateTime | None = Field(default=None, description="Only tasks due strictly after this instant.")
    q: Annotated[str, AfterValidator(_storable)] | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Case-insensitive substring of title or description.",
    )
    sort: TaskSort = TaskSort.created_at_desc
    limit: int = Field(default=50, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=1_000_000)
