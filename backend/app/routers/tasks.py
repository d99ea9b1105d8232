"""Task routes: parse, call the service, shape the response."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from app.auth.jwt import CurrentUser
from app.database import DbSession
from app.routers.responses import problem_responses
from app.schemas.task import TaskCreate, TaskListQuery, TaskPage, TaskPatch, TaskRead, TaskReplace
from app.services import tasks as service

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

IfMatch = Annotated[
    str | None,
    Header(
        description='Only act if the task\'s current ETag is one of these (e.g. `"3"`), else 412.',
        examples=['"3"'],
    ),
]


def _if_match(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _with_etag(response: Response, result: service.VersionedTask) -> TaskRead:
    response.headers["ETag"] = result.etag
    return result.task


_ETAG_HEADER: dict[str, Any] = {"ETag": {"description": "Strong ETag of the task.", "schema": {"type": "string"}}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    operation_id="createTask",
    summary="Create a task",
    responses={
        201: {
            "headers": {
                **_ETAG_HEADER,
                "Location": {"description": "URL of the new task.", "schema": {"type": "string"}},
            }
        },
        **problem_responses(401, 413, 422, 503),
    },
)
async def create_task(
    body: TaskCreate, user: CurrentUser, session: DbSession, request: Request, response: Response
) -> TaskRead:
    """Create a task owned by the caller."""
    result = await service.create_task(session, user, body)
    response.headers["Location"] = str(request.url_for("get_task", task_id=result.task.id).path)
    return _with_etag(response, result)


@router.get(
    "",
    operation_id="listTasks",
    summary="List the caller's tasks",
    responses=problem_responses(401, 422, 503),
)
async def list_tasks(query: Annotated[TaskListQuery, Query()], user: CurrentUser, session: DbSession) -> TaskPage:
    """Filter, search, sort and page through the caller's tasks."""
    return await service.list_tasks(session, user, query)


@router.get(
    "/{task_id}",
    operation_id="getTask",
    name="get_task",
    summary="Get one task",
    responses={200: {"headers": _ETAG_HEADER}, **problem_responses(401, 403, 404, 422, 503)},
)
async def get_task(task_id: uuid.UUID, user: CurrentUser, session: DbSession, response: Response) -> TaskRead:
    """One of the caller's tasks."""
    return _with_etag(response, await service.get_task(session, user, task_id))


@router.put(
    "/{task_id}",
    operation_id="replaceTask",
    summary="Replace a task",
    responses={200: {"headers": _ETAG_HEADER}, **problem_responses(401, 403, 404, 412, 413, 422, 503)},
)
async def replace_task(
    task_id: uuid.UUID,
    body: TaskReplace,
    user: CurrentUser,
    session: DbSession,
    response: Response,
    if_match: IfMatch = None,
) -> TaskRead:
    """Replace every field; omitted optional fields go back to their defaults."""
    result = await service.update_task(session, user, task_id, body.model_dump(), _if_match(if_match))
    return _with_etag(response, result)


@router.patch(
    "/{task_id}",
    operation_id="updateTask",
    summary="Update some fields of a task",
    responses={200: {"headers": _ETAG_HEADER}, **problem_responses(401, 403, 404, 412, 413, 422, 503)},
)
async def update_task(
    task_id: uuid.UUID,
    body: TaskPatch,
    user: CurrentUser,
    session: DbSession,
    response: Response,
    if_match: IfMatch = None,
) -> TaskRead:
    """Change only the fields given; `null` clears description or due_date."""
    result = await service.update_task(session, user, task_id, body.changes(), _if_match(if_match))
    return _with_etag(response, result)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="deleteTask",
    summary="Delete a task",
    responses=problem_responses(401, 403, 404, 412, 422, 503),
)
async def delete_task(task_id: uuid.UUID, user: CurrentUser, session: DbSession, if_match: IfMatch = None) -> Response:
    """Delete one of the caller's tasks."""
    await service.delete_task(session, user, task_id, _if_match(if_match))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
