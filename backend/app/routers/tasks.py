"""Task routes: parse, call the service, map its result to a status, headers and the rendered task."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from app.auth.jwt import CurrentUser
from app.database import Database
from app.errors import (
    ContentTooLarge,
    Forbidden,
    InvalidCursor,
    MalformedRequest,
    NotFound,
    PreconditionFailed,
    QueryTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from app.models.idempotency import IDEMPOTENCY_KEY_MAX
from app.openapi import header_refs, problem_responses
from app.schemas.task import (
    TaskCreate,
    TaskListQuery,
    TaskPage,
    TaskPatch,
    TaskRead,
    TaskReplace,
    render_page,
    render_task,
)
from app.services import tasks as service
from app.services.idempotency import IdempotencyKeyReused

# The collection's path; a task's path is TASK_PATH plus its id (the Location of a created task).
COLLECTION_PATH = "/api/tasks"
TASK_PATH = COLLECTION_PATH + "/"
router = APIRouter(prefix=COLLECTION_PATH, tags=["tasks"])

IfMatch = Annotated[
    str | None,
    Header(
        description='Only act if the task\'s current ETag is one of these (e.g. `"3"`), else 412.',
        examples=['"3"'],
    ),
]


def _database(request: Request) -> Database:
    # The hot routes take the Database from the app rather than through the `Db` dependency: each
    # dependency FastAPI solves costs a measurable share of a request.
    database: Database = request.app.state.database
    return database


def _if_match(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _task_response(result: service.VersionedTask, status_code: int = 200, **headers: str) -> Response:
    return Response(
        render_task(result.task), status_code, headers={"ETag": result.etag, **headers}, media_type="application/json"
    )


_ETAG_HEADER: dict[str, Any] = header_refs("ETag")
# PUT and PATCH answer alike.
_WRITE_ROUTE: dict[str, Any] = {
    "response_model": TaskRead,
    "response_description": "The task as written.",
    "responses": {
        200: {"headers": _ETAG_HEADER},
        **problem_responses(
            MalformedRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            PreconditionFailed,
            ContentTooLarge,
            ValidationFailed,
            TooManyRequests,
            ServiceUnavailable,
        ),
    },
}


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=r"^[\x21-\x7e]+$",
        description=(
            "Makes a retried POST safe: the same key with the same body within 24 h replays the first "
            "response (same task) instead of creating another; the same key with a different body is 422."
        ),
        examples=["5f0c6a7e-3f7e-4a39-9d43-1f1f4ad0c2b1"],
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    operation_id="createTask",
    response_description="The created task (or, with a replayed Idempotency-Key, the one created first).",
    summary="Create a task",
    responses={
        201: {
            "headers": {
                **_ETAG_HEADER,
                **header_refs("Location"),
                "Idempotent-Replayed": {
                    "description": "`true` when this is the stored response to an earlier request with the same key.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            }
        },
        **problem_responses(
            MalformedRequest,
            Unauthorized,
            ContentTooLarge,
            ValidationFailed,
            IdempotencyKeyReused,
            TooManyRequests,
            ServiceUnavailable,
        ),
    },
)
async def create_task(
    body: TaskCreate,
    user: CurrentUser,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a task owned by the caller."""
    root_path = request.scope.get("root_path", "")
    return await create(_database(request), user, body, idempotency_key, root_path=root_path)


async def create(
    db: Database, user: str, body: TaskCreate, idempotency_key: str | None, *, root_path: str = ""
) -> Response:
    """POST /api/tasks once parsed: the 201 with the created (or replayed) task."""
    # With a key the claim, the insert and the stored response are one transaction; without, one statement.
    async with db.transaction(user) if idempotency_key is not None else db.writer(user) as conn:
        created = await service.create_task(conn, user, body, idempotency_key)
    location = root_path.rstrip("/") + TASK_PATH + str(created.task.id)
    if created.replayed:
        return _task_response(created.task, 201, Location=location, **{"Idempotent-Replayed": "true"})
    return _task_response(created.task, 201, Location=location)


@router.get(
    "",
    operation_id="listTasks",
    response_description="One page of the matching tasks.",
    summary="List the caller's tasks",
    response_model=TaskPage,
    responses=problem_responses(
        Unauthorized, ValidationFailed, InvalidCursor, QueryTimeout, TooManyRequests, ServiceUnavailable
    ),
)
async def list_tasks(query: Annotated[TaskListQuery, Query()], user: CurrentUser, request: Request) -> Response:
    """Filter, search, sort and page through the caller's tasks."""
    return await list_page(_database(request), user, query)


async def list_page(db: Database, user: str, query: TaskListQuery) -> Response:
    """GET /api/tasks once parsed: one page of the caller's matching tasks."""
    async with db.reader(user) as conn:
        page = await service.list_tasks(conn, user, query)
    body = render_page(page.items, total=page.total, limit=page.limit, offset=page.offset, next_cursor=page.next_cursor)
    return Response(body, media_type="application/json")


@router.get(
    "/{task_id}",
    operation_id="getTask",
    response_description="The task.",
    name="get_task",
    summary="Get one task",
    response_model=TaskRead,
    responses={
        200: {"headers": _ETAG_HEADER},
        **problem_responses(Unauthorized, Forbidden, NotFound, ValidationFailed, TooManyRequests, ServiceUnavailable),
    },
)
async def get_task(task_id: uuid.UUID, user: CurrentUser, request: Request) -> Response:
    """One of the caller's tasks."""
    return await read(_database(request), user, task_id)


async def read(db: Database, user: str, task_id: uuid.UUID) -> Response:
    """GET /api/tasks/{task_id} once parsed: the task with its ETag."""
    async with db.reader(user) as conn:
        task = await service.get_task(conn, user, task_id)
    return _task_response(task)


@router.put("/{task_id}", operation_id="replaceTask", summary="Replace a task", **_WRITE_ROUTE)
async def replace_task(
    task_id: uuid.UUID, body: TaskReplace, user: CurrentUser, request: Request, if_match: IfMatch = None
) -> Response:
    """Replace every field; omitted optional fields go back to their defaults."""
    return await update(_database(request), user, task_id, body.model_dump(), if_match)


@router.patch("/{task_id}", operation_id="updateTask", summary="Update some fields of a task", **_WRITE_ROUTE)
async def update_task(
    task_id: uuid.UUID, body: TaskPatch, user: CurrentUser, request: Request, if_match: IfMatch = None
) -> Response:
    """Change only the fields given; `null` clears description or due_date."""
    return await update(_database(request), user, task_id, body.changes(), if_match)


async def update(
    db: Database, user: str, task_id: uuid.UUID, changes: dict[str, Any], if_match: str | None
) -> Response:
    """PUT and PATCH once parsed: apply `changes` (every field for PUT) if `if_match` allows."""
    async with db.writer(user) as conn:
        task = await service.update_task(conn, user, task_id, changes, _if_match(if_match))
    return _task_response(task)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="deleteTask",
    response_description="Deleted; no body.",
    summary="Delete a task",
    responses=problem_responses(
        Unauthorized, Forbidden, NotFound, PreconditionFailed, ValidationFailed, TooManyRequests, ServiceUnavailable
    ),
)
async def delete_task(task_id: uuid.UUID, user: CurrentUser, request: Request, if_match: IfMatch = None) -> Response:
    """Delete one of the caller's tasks."""
    return await remove(_database(request), user, task_id, if_match)


async def remove(db: Database, user: str, task_id: uuid.UUID, if_match: str | None) -> Response:
    """DELETE /api/tasks/{task_id} once parsed: 204 if deleted."""
    async with db.writer(user) as conn:
        await service.delete_task(conn, user, task_id, _if_match(if_match))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
