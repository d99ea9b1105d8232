"""Arguments and results of the agent tools that the REST schemas do not already describe.

Tasks themselves are `TaskCreate` / `TaskPatch` / `TaskRead` / `TaskPage` from app/schemas/task.py,
so a tool validates with the same rules and messages as the REST route and returns tasks in the
same shape.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.task import TaskCreate, TaskPatch, TaskRead

MAX_NEW_OR_UPDATED = 25
MAX_IDS = 100

# The ETag as the API issues it (`"3"`); the bare number is accepted too, since models often drop
# the quotes and a format error helps them more than a precondition failure would.
ETAG_PATTERN = r'^("[1-9][0-9]{0,9}"|[1-9][0-9]{0,9})$'
_BARE_VERSION = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)

Etag = Annotated[
    str,
    Field(
        pattern=ETAG_PATTERN,
        description=(
            'Only update if the task is still at this version (its ETag, e.g. `"3"`, as get_task and every '
            "write report it); otherwise the whole batch fails and nothing changes. Like HTTP If-Match."
        ),
        examples=['"3"'],
    ),
]


def if_match(etag: str | None) -> list[str] | None:
    """The If-Match list the service expects for an optional `etag` argument."""
    if etag is None:
        return None
    return [f'"{etag}"' if _BARE_VERSION.fullmatch(etag) else etag]


class TaskUpdate(TaskPatch):
    """One item of update_tasks: the task's id, an optional ETag, and PATCH fields."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "0b5e9a4c-2f4e-4d7b-9a53-3c1f7f0a8e21", "status": "in_progress"}]}
    )

    id: uuid.UUID = Field(description="The task to change.")
    etag: Etag | None = None

    def changes(self) -> dict[str, object]:
        """The task fields sent (PATCH semantics: `null` clears description/due_date)."""
        return self.model_dump(exclude_unset=True, exclude={"id", "etag"})


NewTasks = Annotated[
    list[TaskCreate],
    Field(
        min_length=1,
        max_length=MAX_NEW_OR_UPDATED,
        description=(
            f"1-{MAX_NEW_OR_UPDATED} tasks, each shaped like the body of POST /api/tasks (only `title` is required)."
        ),
    ),
]
Updates = Annotated[
    list[TaskUpdate],
    Field(
        min_length=1,
        max_length=MAX_NEW_OR_UPDATED,
        description=(
            f"1-{MAX_NEW_OR_UPDATED} updates, each `id`, an optional `etag` and only the fields to change; "
            "`null` clears description or due_date. Each id at most once."
        ),
    ),
]
TaskIds = Annotated[
    list[uuid.UUID],
    Field(min_length=1, max_length=MAX_IDS, description=f"1-{MAX_IDS} task ids, each at most once."),
]


class TaskItems(BaseModel):
    """Tasks written by a tool, in the order they were given."""

    items: list[TaskRead]


class DeletedTasks(BaseModel):
    """The ids of the deleted tasks, in the order they were given."""

    deleted: list[uuid.UUID]
