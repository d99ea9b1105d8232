"""Request and response bodies for tasks: TaskCreate / TaskReplace / TaskPatch / TaskRead / TaskPage."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from app.columns import DESCRIPTION_MAX, TITLE_MAX, USER_ID_MAX, unstorable_reason
from app.models.task import TaskPriority, TaskRow, TaskStatus

# --- text -----------------------------------------------------------------------------------------
# Every rule the server applies to a string is also in its schema (a `pattern`, or the description
# where JSON Schema has no way to say it), so a request that is valid by the contract is accepted.

# Characters that show nothing on their own: whitespace, controls and the Basic Multilingual Plane's
# invisible format characters (Unicode categories Cc, Cf; e.g. U+200B, U+2060, U+FEFF), Hangul
# fillers, the combining grapheme joiner and variation selectors. A title made only of these is
# blank. Written as ranges that mean the same in Python and ECMA-262 regular expressions (no `\s`,
# whose members differ between the two).
_BLANK_RANGES = (
    (0x0000, 0x0020), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160),
    (0x1680, 0x1680), (0x180E, 0x180E), (0x2000, 0x200F), (0x2028, 0x202F), (0x205F, 0x2064),
    (0x2066, 0x206F), (0x3000, 0x3000), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0),
    (0xFFF9, 0xFFFB),
)  # fmt: skip
_BLANK = frozenset(chr(cp) for low, high in _BLANK_RANGES for cp in range(low, high + 1))
_BLANK_CLASS = "".join(f"\\u{low:04X}" if low == high else f"\\u{low:04X}-\\u{high:04X}" for low, high in _BLANK_RANGES)
# No NUL anywhere (PostgreSQL text cannot hold it) ...
NO_NUL_PATTERN = "^[^\\u0000]*$"
# ... and at least one character that is not blank.
TITLE_PATTERN = f"^[^\\u0000]*[^{_BLANK_CLASS}][^\\u0000]*$"
_UNICODE_NOTE = "Valid Unicode text (no lone surrogates), without NUL characters."


def _storable(value: str) -> str:
    # Reject here so both databases answer the same clear 422 instead of a driver error.
    if (reason := unstorable_reason(value)) is not None:
        raise ValueError(reason)
    return value


def _title(value: str) -> str:
    _storable(value)
    if _BLANK.issuperset(value):
        raise ValueError("must not be blank")
    # Stored without surrounding whitespace; the visible character checked above survives.
    return value.strip()


Title = Annotated[
    str,
    # The limits apply to what is sent (before trimming), exactly as the contract states them.
    Field(
        min_length=1,
        max_length=TITLE_MAX,
        description=(
            f"1-{TITLE_MAX} characters, at least one of them visible (not whitespace, a control or an "
            f"invisible format character); stored without leading and trailing whitespace. {_UNICODE_NOTE}"
        ),
        examples=["Write the launch post"],
        json_schema_extra={"pattern": TITLE_PATTERN},
    ),
    AfterValidator(_title),
]
Description = Annotated[
    str,
    Field(
        max_length=DESCRIPTION_MAX,
        description=f"Up to {DESCRIPTION_MAX} characters. {_UNICODE_NOTE}",
        examples=["Draft, review with Sam, publish on Friday"],
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    ),
    AfterValidator(_storable),
]
SEARCH_MAX = 200
SearchText = Annotated[
    str,
    Field(min_length=1, max_length=SEARCH_MAX, json_schema_extra={"pattern": NO_NUL_PATTERN}),
    AfterValidator(_storable),
]

# --- date-times -----------------------------------------------------------------------------------

# RFC 3339 `date-time` with an offset. Two edges Python cannot hold are excluded, and said so in the
# contract: a leap second (`:60`) and the first and last day of the calendar (0001-01-01,
# 9999-12-31), where an offset can move the instant outside years 1-9999 once converted to UTC.
RFC3339_PATTERN = (
    r"^(?!0001-01-01|9999-12-31)[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_RFC3339 = re.compile(RFC3339_PATTERN, re.ASCII)
_RFC3339_DESCRIPTION = (
    "RFC 3339 with an offset (e.g. `2026-12-01T17:00:00Z` or `2026-12-01T18:00:00+01:00`); stored in UTC. "
    "Not a number, not without an offset; no leap second, not on 0001-01-01 or 9999-12-31."
)


def _rfc3339(value: object) -> datetime:
    # A string in RFC 3339's exact shape only: pydantic alone would also take numbers (Unix time),
    # booleans' cousins and offset-less times.
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time with an offset, such as 2026-12-01T17:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:  # e.g. February 30th, or an offset of 24 hours
        raise ValueError("is not a valid date-time") from None
    return parsed.astimezone(UTC)


RFC3339DateTime = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339_PATTERN,
            "description": _RFC3339_DESCRIPTION,
            "examples": ["2026-12-01T17:00:00Z"],
        }
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
    due_date: RFC3339DateTime | None = None


class TaskReplace(TaskCreate):
    """Body of PUT /api/tasks/{id}: a full replacement; omitted optional fields reset to defaults."""


class TaskPatch(_Body):
    """Body of PATCH /api/tasks/{id}: only the fields given change; `null` clears description/due_date."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "completed"}]})

    title: Title = None  # type: ignore[assignment]  # may be absent, but not null (the type has no None)
    description: Description | None = None
    status: TaskStatus = None  # type: ignore[assignment]
    priority: TaskPriority = None  # type: ignore[assignment]
    due_date: RFC3339DateTime | None = None

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


# A cursor holds the last row's sort key (a title: up to 255 characters of UTF-8), its id and a checksum.
PAGE_CURSOR_MAX_LENGTH = 2048


class TaskPage(BaseModel):
    """One page of the caller's tasks; `total` counts every match, not just this page."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_EXAMPLE_TASK], "total": 1, "limit": 50, "offset": 0, "next_cursor": None}]
        }
    )

    items: list[TaskRead]
    total: int = Field(ge=0)
    limit: int = Field(ge=1, le=100)
    offset: int = Field(ge=0)
    next_cursor: Annotated[str, Field(max_length=PAGE_CURSOR_MAX_LENGTH)] | None = Field(
        default=None,
        description=(
            "Always present: pass it as `cursor` (same filters and sort) for the page after this one; "
            "null on the last page. Opaque; valid only for this user, sort and filters."
        ),
    )


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
    due_before: RFC3339DateTime | None = Field(default=None, description="Only tasks due strictly before this instant.")
    due_after: RFC3339DateTime | None = Field(default=None, description="Only tasks due strictly after this instant.")
    q: SearchText | None = Field(
        default=None,
        description=f"Case-insensitive substring of title or description; 1-{SEARCH_MAX} characters. {_UNICODE_NOTE}",
    )
    sort: TaskSort = TaskSort.created_at_desc
    limit: int = Field(default=50, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    cursor: str | None = Field(
        default=None,
        min_length=1,
        max_length=PAGE_CURSOR_MAX_LENGTH,
        pattern="^[A-Za-z0-9_-]+$",
        description=(
            "The `next_cursor` of the previous page: the page after it, found through the index, so a deep "
            "page costs what the first one does (use it instead of `offset`, which must then be 0). "
            "Only with the same sort and filters it was issued for, else 422."
        ),
    )

    @model_validator(mode="after")
    def _cursor_or_offset(self) -> TaskListQuery:
        if self.cursor is not None and self.offset:
            raise ValueError("give `cursor` or a non-zero `offset`, not both")
        return self


# --- the one rendering of a task ----------------------------------------------------------------
# orjson writes UTC datetimes ("...Z") exactly as pydantic serializes TaskRead; asyncpg's own UUID
# class is not one orjson knows, so it goes through `str`. tests/test_schemas.py pins the bytes.
_JSON_OPTIONS = orjson.OPT_UTC_Z


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=_JSON_OPTIONS)


def render_task(task: TaskRow) -> bytes:
    """A task as the JSON of TaskRead."""
    return _dumps(task)


def render_page(
    items: Sequence[TaskRow], *, total: int, limit: int, offset: int, next_cursor: str | None = None
) -> bytes:
    """A page of tasks as the JSON of TaskPage."""
    return _dumps({"items": items, "total": total, "limit": limit, "offset": offset, "next_cursor": next_cursor})


def render_json(value: Any) -> bytes:
    """Any JSON value holding tasks (the change feed's pages), with tasks rendered as render_task does."""
    return _dumps(value)


def task_json(task: TaskRow) -> dict[str, Any]:
    """A task as the JSON value TaskRead describes (strings for ids and times), for non-HTTP doors."""
    value: dict[str, Any] = orjson.loads(render_task(task))
    return value
