"""Keeping clients in sync: the change feed (`GET /api/tasks/changes`), app/services/changes.py
presented as JSON.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.auth.jwt import CurrentUser
from app.database import Db
from app.errors import (
    CursorExpired,
    InvalidCursor,
    QueryTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from app.openapi import problem_responses
from app.schemas.changes import (
    ChangesQuery,
    TaskChanges,
    deletion_entry,
    render_changes,
    upsert_entry,
)
from app.services import changes as service

router = APIRouter(prefix="/api/tasks", tags=["sync"])


@router.get(
    "/changes",
    operation_id="listTaskChanges",
    summary="What changed since a cursor (change feed)",
    response_description="The changes after `since` (or a snapshot), and the cursor to continue from.",
    response_model=TaskChanges,
    responses=problem_responses(
        Unauthorized, CursorExpired, ValidationFailed, InvalidCursor, QueryTimeout, TooManyRequests, ServiceUnavailable
    ),
)
async def list_changes(query: Annotated[ChangesQuery, Query()], user: CurrentUser, db: Db) -> Response:
    """Without `since`: every current task as an upsert (a snapshot, paged like any answer). With
    `since` (the `cursor` of an earlier answer): only what changed after it, deletes included, each
    task at most once and in its current state. Repeat with the new `cursor` while `has_more`.
    """
    async with db.reader(user) as conn:
        page = await service.list_changes(conn, user, query.since, query.limit)
    entries = [
        upsert_entry(change.task, change.etag)
        if isinstance(change, service.Upsert)
        else deletion_entry(change.id, change.deleted_at)
        for change in page.changes
    ]
    body = render_changes(entries, cursor=page.cursor, has_more=page.has_more)
    return Response(body, media_type="application/json")
