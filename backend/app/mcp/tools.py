"""The agent tools: parse (typed signatures), call the same owner-scoped services as the REST
routes, map the result to tool output (structured content, a short text summary, ETags in `_meta`).

The owner is always the verified token's subject, which app/mcp/http.py put in the request scope:
no tool takes a user id. Batches run in one transaction and are all-or-nothing. Another user's task
is reported exactly like a missing one (the REST routes say 403; a tool never reveals that it
exists).
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import orjson
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from app.database import Database
from app.errors import (
    Forbidden,
    InvalidCursor,
    NotFound,
    PreconditionFailed,
    Problem,
    RateLimited,
    is_database_unavailable,
)
from app.mcp.http import OWNER_SCOPE_KEY
from app.mcp.schemas import DeletedTasks, NewTasks, TaskIds, TaskItems, Updates, if_match
from app.models.task import TaskPriority, TaskStatus
from app.ratelimit import Operation, count_operation
from app.schemas.task import (
    PAGE_CURSOR_MAX_LENGTH,
    RFC3339DateTime,
    SearchText,
    TaskListQuery,
    TaskPage,
    TaskRead,
    TaskSort,
    render_page,
    task_json,
)
from app.services import tasks as service

logger = logging.getLogger("app.mcp")

FIND_DEFAULT_LIMIT = 20
# Titles are cut in the text summary (the structured content has them whole).
_SUMMARY_TITLE = 80

NOT_FOUND = "not found"
STALE = "changed or deleted since you read it (etag mismatch); read it again with get_task"


class _Rejected(Exception):
    """One item of a batch failed; raised inside the transaction so that it rolls back."""

    def __init__(self, index: int, item_id: uuid.UUID | None, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.item_id = item_id
        self.reason = reason


# --- request context ---------------------------------------------------------------------------


async def _caller(ctx: Context, operation: Operation, cost: int = 1) -> tuple[str, Database]:
    """The verified owner id and the app's database, from the HTTP request that carries this call,
    after counting the call against the owner's rate limit as the REST operations it performs.
    """
    request = ctx.request_context.request
    if not isinstance(request, Request) or OWNER_SCOPE_KEY not in request.scope:
        # Only reachable if the SDK were served without app/mcp/http.py in front: fail closed.
        raise ToolError("This tool needs an authenticated HTTP request.")
    owner: str = request.scope[OWNER_SCOPE_KEY]
    try:
        await count_operation(request.app, owner, operation, cost=cost)
    except RateLimited as exc:
        raise ToolError(f"{exc.detail} Retry after {exc.headers['Retry-After']} s; nothing was changed.") from None
    database: Database = request.app.state.database
    return owner, database


# --- results -----------------------------------------------------------------------------------


def _line(task: dict[str, Any], etag: str | None = None) -> str:
    """One line of a text summary for a task as task_json renders it."""
    title = task["title"] if len(task["title"]) <= _SUMMARY_TITLE else task["title"][: _SUMMARY_TITLE - 1] + "…"
    parts = [task["id"], task["status"], f"{task['priority']} priority"]
    if task["due_date"] is not None:
        parts.append("due " + task["due_date"])
    if etag is not None:
        parts.append(f"etag {etag}")
    return f"- {title} ({', '.join(parts)})"


def _result(structured: dict[str, Any], summary: str, etags: dict[str, str] | None = None) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=summary)],
        structured_content=structured,
        # The ETag travels beside the task, as the REST API sends it in a header beside the body.
        _meta={"etags": etags} if etags is not None else None,
    )


def _versioned_result(tasks: Sequence[service.VersionedTask], verb: str) -> CallToolResult:
    rendered = [task_json(t.task) for t in tasks]
    etags = {task["id"]: t.etag for task, t in zip(rendered, tasks, strict=True)}
    summary = "\n".join(
        [f"{verb} {_count(len(tasks), 'task')}:", *(_line(task, etags[task["id"]]) for task in rendered)]
    )
    return _result({"items": rendered}, summary, etags)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _error(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _reason(exc: Problem, *, conditional: bool) -> str:
    # Another user's task answers exactly as a missing id would in the same call: NOT_FOUND, or,
    # with an etag, STALE (for a missing task the service reports a failed precondition, RFC 9110).
    if isinstance(exc, Forbidden):
        return STALE if conditional else NOT_FOUND
    if isinstance(exc, NotFound):
        return NOT_FOUND
    if isinstance(exc, PreconditionFailed):
        return STALE
    return exc.detail


def _database_error(exc: Exception) -> CallToolResult:
    # As app/errors.py does for REST: the class name only, never the driver's message (it can carry
    # SQL or host names).
    if is_database_unavailable(exc):
        logger.warning("database unavailable: %s", type(exc).__name__)
        return _error("The database is unavailable; nothing was changed. Retry shortly.")
    logger.error("database error: %s (%s)", type(exc).__name__, type(getattr(exc, "orig", None)).__name__)
    return _error("An unexpected error occurred; nothing was changed.")


_T = TypeVar("_T")


async def _write_batch(
    database: Database,
    owner: str,
    label: str,
    items: Sequence[_T],
    apply: Callable[[AsyncConnection, _T], Awaitable[Any]],
    item_id: Callable[[_T], uuid.UUID | None],
    *,
    conditional: Callable[[_T], bool] = lambda _: False,
    one_statement: bool = True,
) -> list[Any] | CallToolResult:
    """Apply `apply` to every item in one transaction; the first failing item rolls all back.

    `one_statement`: `apply` writes with a single statement, so a batch of one needs no transaction.
    """
    seen: dict[uuid.UUID, int] = {}
    for index, item in enumerate(items):
        key = item_id(item)
        if key is not None:
            if key in seen:
                return _error(f"Nothing was changed: {label}[{index}] repeats the id of {label}[{seen[key]}] ({key}).")
            seen[key] = index
    try:
        # A single statement needs no transaction around it (Database.writer).
        single = one_statement and len(items) == 1
        async with database.writer(owner) if single else database.transaction(owner) as conn:
            results = []
            for index, item in enumerate(items):
                try:
                    results.append(await apply(conn, item))
                except Problem as exc:
                    raise _Rejected(index, item_id(item), _reason(exc, conditional=conditional(item))) from None
            return results
    except _Rejected as rejected:
        which = f"{label}[{rejected.index}]" + (f" ({rejected.item_id})" if rejected.item_id else "")
        return _error(f"Nothing was changed: {which}: {rejected.reason}.")
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return _database_error(exc)


# --- the tools ---------------------------------------------------------------------------------


def _query_doc(name: str) -> str | None:
    # The REST query parameter's own description, so both doors document a filter the same way.
    return TaskListQuery.model_fields[name].description


async def find_tasks(
    ctx: Context,
    status: TaskStatus | None = None,
    priority: TaskPriority | None = None,
    due_before: Annotated[RFC3339DateTime | None, Field(description=_query_doc("due_before"))] = None,
    due_after: Annotated[RFC3339DateTime | None, Field(description=_query_doc("due_after"))] = None,
    q: Annotated[SearchText | None, Field(description=_query_doc("q"))] = None,
    sort: Annotated[
        TaskSort,
        Field(description="`-` sorts descending; priority sorts low < medium < high; no due date sorts last."),
    ] = TaskSort.created_at_desc,
    limit: Annotated[int, Field(ge=1, le=100, description="Page size, 1-100.")] = FIND_DEFAULT_LIMIT,
    offset: Annotated[int, Field(ge=0, le=1_000_000, description="Matches to skip (paging).")] = 0,
    cursor: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=PAGE_CURSOR_MAX_LENGTH,
            pattern="^[A-Za-z0-9_-]+$",
            description="The `next_cursor` of the previous page (same filters and sort), instead of an `offset`.",
        ),
    ] = None,
) -> Annotated[CallToolResult, TaskPage]:
    """Find the user's tasks: filter by status, priority, due date range and text; sort and page.

    The same filters as GET /api/tasks. `total` counts every match, so page with `offset` while
    `offset + limit < total`. Items are tasks as the REST API returns them.
    """
    if cursor is not None and offset:
        return _error("Give `cursor` or a non-zero `offset`, not both.")
    owner, database = await _caller(ctx, "read")
    # Already validated by the same annotated types TaskListQuery declares: construct, do not re-parse.
    query = TaskListQuery.model_construct(
        status=status,
        priority=priority,
        due_before=due_before,
        due_after=due_after,
        q=q,
        sort=sort,
        limit=limit,
        offset=offset,
        cursor=cursor,
    )
    try:
        async with database.reader(owner) as conn:
            page = await service.list_tasks(conn, owner, query)
    except InvalidCursor as exc:
        return _error(exc.detail)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return _database_error(exc)
    # The REST route's own rendering of a page, so the items are byte for byte what GET /api/tasks sends.
    structured = orjson.loads(
        render_page(page.items, total=page.total, limit=page.limit, offset=page.offset, next_cursor=page.next_cursor)
    )
    items = structured["items"]
    if not items:
        shown = "none on this page"
    elif cursor is None:
        shown = f"showing {offset + 1}-{offset + len(items)}"
    else:
        shown = f"showing {len(items)} after the cursor"
    lines = [f"{_count(page.total, 'matching task')}, {shown}:", *map(_line, items)]
    if page.next_cursor is not None:
        lines.append(f"More: pass cursor={page.next_cursor} for the next page.")
    summary = "\n".join(lines)
    return _result(structured, summary)


async def get_task(
    ctx: Context, id: Annotated[uuid.UUID, Field(description="The task's id.")]
) -> Annotated[CallToolResult, TaskRead]:
    """Get one of the user's tasks by id, with its etag (for a conditional update_tasks)."""
    owner, database = await _caller(ctx, "read")
    try:
        async with database.reader(owner) as conn:
            task = await service.get_task(conn, owner, id)
    except (Forbidden, NotFound):
        return _error(f"Task {id}: {NOT_FOUND}.")
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return _database_error(exc)
    rendered = task_json(task.task)
    return _result(rendered, "Task:\n" + _line(rendered, task.etag), {rendered["id"]: task.etag})


async def add_tasks(ctx: Context, tasks: NewTasks) -> Annotated[CallToolResult, TaskItems]:
    """Create 1-25 tasks for the user, all or none, returned in the given order with their etags."""
    owner, database = await _caller(ctx, "write", len(tasks))

    async def create(conn: AsyncConnection, data: Any) -> service.VersionedTask:
        return (await service.create_task(conn, owner, data)).task

    created = await _write_batch(database, owner, "tasks", tasks, create, lambda _: None)
    return created if isinstance(created, CallToolResult) else _versioned_result(created, "Added")


async def update_tasks(ctx: Context, updates: Updates) -> Annotated[CallToolResult, TaskItems]:
    """Change fields of 1-25 of the user's tasks, all or none (PATCH semantics per item).

    With an `etag` an item only applies if the task is still at that version; if any item is
    invalid, missing or stale, nothing changes and the error names the item's index.
    """
    owner, database = await _caller(ctx, "write", len(updates))

    async def apply(conn: AsyncConnection, update: Any) -> service.VersionedTask:
        return await service.update_task(conn, owner, update.id, update.changes(), if_match(update.etag))

    updated = await _write_batch(
        database, owner, "updates", updates, apply, lambda u: u.id, conditional=lambda u: u.etag is not None
    )
    return updated if isinstance(updated, CallToolResult) else _versioned_result(updated, "Updated")


async def complete_tasks(ctx: Context, ids: TaskIds) -> Annotated[CallToolResult, TaskItems]:
    """Mark 1-100 of the user's tasks completed, all or none; already completed ones stay as they are."""
    owner, database = await _caller(ctx, "write", len(ids))
    done = {"status": TaskStatus.completed}

    async def complete(conn: AsyncConnection, task_id: uuid.UUID) -> service.VersionedTask:
        current = await service.get_task(conn, owner, task_id)
        if current.task["status"] == TaskStatus.completed:
            # No write, so repeating the call changes nothing (not even updated_at or the etag).
            return current
        return await service.update_task(conn, owner, task_id, done, None)

    # Reads, then writes: in one transaction even for one task.
    completed = await _write_batch(database, owner, "ids", ids, complete, lambda i: i, one_statement=False)
    return completed if isinstance(completed, CallToolResult) else _versioned_result(completed, "Completed")


async def delete_tasks(ctx: Context, ids: TaskIds) -> Annotated[CallToolResult, DeletedTasks]:
    """Delete 1-100 of the user's tasks for good, all or none."""
    owner, database = await _caller(ctx, "write", len(ids))

    async def delete(conn: AsyncConnection, task_id: uuid.UUID) -> uuid.UUID:
        await service.delete_task(conn, owner, task_id, None)
        return task_id

    deleted = await _write_batch(database, owner, "ids", ids, delete, lambda i: i)
    if isinstance(deleted, CallToolResult):
        return deleted
    gone = [str(task_id) for task_id in deleted]
    summary = "\n".join([f"Deleted {_count(len(gone), 'task')}:", *(f"- {task_id}" for task_id in gone)])
    return _result({"deleted": gone}, summary)


# --- registration ------------------------------------------------------------------------------


class TaskTool(Tool):
    """A tool that refuses unknown arguments (as the REST bodies do: `user_id` is an error, not
    silently dropped) and whose argument errors read like the REST API's 422 `errors`.
    """

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        """Run the tool; unknown or invalid arguments become one readable ToolError."""
        writes = self.annotations is None or not self.annotations.read_only_hint
        unknown = sorted(set(arguments) - set(self.parameters["properties"]))
        if unknown:
            problems = "; ".join(f"{name}: Extra inputs are not permitted" for name in unknown)
            raise ToolError(_invalid(problems, nothing_changed=writes))
        try:
            return await super().run(arguments, context, convert_result)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            raise ToolError(invalid_arguments_text(cause, nothing_changed=writes)) from cause


def _invalid(problems: str, *, nothing_changed: bool) -> str:
    return ("Invalid arguments; nothing was changed: " if nothing_changed else "Invalid arguments: ") + problems


def invalid_arguments_text(exc: ValidationError, *, nothing_changed: bool = False) -> str:
    """`Invalid arguments: tasks[0].title: must not be blank; ...` (no input values echoed)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ""
        for part in error["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        problems.append(f"{loc or 'arguments'}: {error['msg'].removeprefix('Value error, ')}")
    return _invalid("; ".join(problems), nothing_changed=nothing_changed)


def _annotations(title: str, *, read_only: bool, destructive: bool, idempotent: bool) -> ToolAnnotations:
    # openWorldHint false: the tools touch only this API's own database.
    return ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=False,
    )


def task_tools() -> list[Tool]:
    """The six tools, in the order tools/list presents them."""
    specs: list[tuple[Callable[..., Any], ToolAnnotations]] = [
        (find_tasks, _annotations("Find tasks", read_only=True, destructive=False, idempotent=True)),
        (get_task, _annotations("Get a task", read_only=True, destructive=False, idempotent=True)),
        # Adds only; each call creates new tasks.
        (add_tasks, _annotations("Add tasks", read_only=False, destructive=False, idempotent=False)),
        # Overwrites fields; every applied write moves updated_at and the etag on.
        (update_tasks, _annotations("Update tasks", read_only=False, destructive=True, idempotent=False)),
        # Overwrites the previous status; a second call finds them completed and writes nothing.
        (complete_tasks, _annotations("Complete tasks", read_only=False, destructive=True, idempotent=True)),
        # A second call changes nothing more (it reports the ids as not found).
        (delete_tasks, _annotations("Delete tasks", read_only=False, destructive=True, idempotent=True)),
    ]
    tools: list[Tool] = []
    for fn, hints in specs:
        # cleandoc: the docstring's indentation is not part of what a model reads.
        description = inspect.cleandoc(fn.__doc__ or "")
        tool = TaskTool.from_function(
            fn, title=hints.title, description=description, annotations=hints, structured_output=True
        )
        # Said in the schema too, so clients know before they call (TaskTool.run enforces it).
        tool.parameters["additionalProperties"] = False
        tools.append(tool)
    return tools
