"""The change feed's answer (TaskChanges) and its rendering; the live events' format."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models.task import TaskRow
from app.schemas.task import _EXAMPLE_TASK, TaskRead, render_json

LIMIT_DEFAULT = 500
LIMIT_MAX = 1000
CURSOR_MAX_LENGTH = 64
CURSOR_DESCRIPTION = (
    "Opaque: pass it back unchanged as `since` (or as `Last-Event-ID` on /api/tasks/events). "
    "Valid for your feed only; its format may change."
)


class TaskUpsert(BaseModel):
    """A task created or changed since the cursor, in its current state: insert or replace it."""

    op: Literal["upsert"]
    task: TaskRead
    etag: str = Field(
        description="The task's ETag, as GET /api/tasks/{id} sends it: usable as If-Match.",
        json_schema_extra={"pattern": '^"[0-9]+"$'},
        examples=['"3"'],
    )


class TaskDeletion(BaseModel):
    """A task deleted since the cursor: remove it (it may be one you never received)."""

    op: Literal["delete"]
    id: uuid.UUID
    deleted_at: datetime = Field(description="In UTC (`Z`).")


TaskChange = Annotated[TaskUpsert | TaskDeletion, Field(discriminator="op")]


class TaskChanges(BaseModel):
    """One page of the caller's changes, oldest first, each task at most once and in its latest state.

    Apply the changes in order, then ask again with `cursor` as `since`; while `has_more` is true,
    more are waiting right away.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "changes": [
                        {"op": "upsert", "task": _EXAMPLE_TASK, "etag": '"2"'},
                        {
                            "op": "delete",
                            "id": "5d1c6a1e-0b8e-4f7a-9d2c-8e4b3a2f1c0d",
                            "deleted_at": "2026-11-26T10:07:40Z",
                        },
                    ],
                    "cursor": "AQAAAAAAAAAHAAAAAAAAAAeFq3Zc3Tw",
                    "has_more": False,
                }
            ]
        }
    )

    changes: list[TaskChange]
    cursor: str = Field(description=CURSOR_DESCRIPTION)
    has_more: bool = Field(description="More changes are waiting: ask again with `cursor` at once.")


class ChangesQuery(BaseModel):
    """Query parameters of GET /api/tasks/changes."""

    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(
        default=None,
        min_length=1,
        max_length=CURSOR_MAX_LENGTH,
        description="The `cursor` of your last answer; leave it out for a snapshot of every current task.",
    )
    limit: int = Field(default=LIMIT_DEFAULT, ge=1, le=LIMIT_MAX, description="Changes per answer at most.")


def upsert_entry(task: TaskRow, etag: str) -> dict[str, Any]:
    """A changed task as a TaskUpsert value."""
    return {"op": "upsert", "task": task, "etag": etag}


def deletion_entry(task_id: uuid.UUID, deleted_at: datetime) -> dict[str, Any]:
    """A deleted task as a TaskDeletion value."""
    return {"op": "delete", "id": task_id, "deleted_at": deleted_at}


def render_changes(changes: Sequence[dict[str, Any]], *, cursor: str, has_more: bool) -> bytes:
    """A page of the feed as the JSON of TaskChanges."""
    return render_json({"changes": changes, "cursor": cursor, "has_more": has_more})


# --- live events (text/event-stream) ------------------------------------------------------------

EVENTS_DESCRIPTION = """\
A `text/event-stream` (Server-Sent Events) that says when your tasks changed, whichever API process
took the write, usually within a second of the commit:

```
event: changes
id: <cursor>
data: {"cursor": "<cursor>"}
```

On each event, fetch `GET /api/tasks/changes?since=<your last cursor>` (page until `has_more` is
false). Without `Last-Event-ID` the first event comes at once (your state is unknown); with it (the
`id` of the last event you saw, or the `cursor` of your last feed answer) an event comes at once only
if something changed since. A comment line (`: keepalive`) comes whenever the stream was quiet for
SYNC_KEEPALIVE_S seconds (15 by default), so proxies keep it open. The
stream ends when the bearer token expires (reconnect with a fresh one) and when the server shuts
down (reconnect). Send the token in `Authorization` as everywhere: EventSource cannot, so read the
stream with `fetch`.
"""


def event_frame(cursor: str) -> bytes:
    """One `changes` event."""
    return b"event: changes\nid: %s\ndata: %s\n\n" % (cursor.encode(), render_json({"cursor": cursor}))


KEEPALIVE_FRAME = b": keepalive\n\n"
