"""Keeping clients in sync: the change feed (`GET /api/tasks/changes`) and live change events
(`GET /api/tasks/events`, Server-Sent Events). The feed is app/services/changes.py presented as JSON;
the events come from this process's ChangeEvents (app/events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.types import Receive, Scope, Send

from app.auth.jwt import TOKEN_EXPIRES_AT, CurrentUser
from app.database import Database, Db
from app.errors import (
    CursorExpired,
    InvalidCursor,
    QueryTimeout,
    ServiceUnavailable,
    TooManyRequests,
    TooManyStreams,
    Unauthorized,
    ValidationFailed,
)
from app.events import ChangeEvents, Stream
from app.httpserver import STOP_ON_SHUTDOWN
from app.openapi import problem_responses
from app.schemas.changes import (
    EVENTS_DESCRIPTION,
    KEEPALIVE_FRAME,
    ChangesQuery,
    TaskChanges,
    deletion_entry,
    event_frame,
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


class EventStreamResponse(Response):
    """The live events of one client (schemas/changes.py EVENTS_DESCRIPTION), until the client goes
    away, its token expires or the server shuts down.

    Everything that can fail (the stream limit, reading the current cursor) happens before the
    response starts, so it is answered as problem+json like any error.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        *,
        events: ChangeEvents,
        db: Database,
        owner: str,
        expires_at: float,
        last_event_id: str | None,
    ) -> None:
        # Not Response.__init__: it would declare a Content-Length of 0.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
        ]
        self.events = events
        self.db = db
        self.owner = owner
        self.expires_at = expires_at
        self.last_event_id = last_event_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the stream."""
        stream = self.events.open(self.owner)
        try:
            # Registered first, then read: a commit in between is heard or read, never neither.
            async with self.db.reader(self.owner) as conn:
                head = (await service.heads(conn, [self.owner]))[self.owner]
            stream.notify(head)
            seen = self._seen()
            scope[STOP_ON_SHUTDOWN] = stream.stop
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            disconnect = asyncio.create_task(_stop_on_disconnect(receive, stream))
            try:
                await self._run(send, stream, head, seen)
            finally:
                disconnect.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await disconnect
        finally:
            self.events.close(stream)

    def _seen(self) -> int | None:
        """The change number the client already has, from Last-Event-ID (None: unknown)."""
        if self.last_event_id is None:
            return None
        try:
            return service.decode_cursor(self.owner, self.last_event_id).seq
        except InvalidCursor:
            return None  # a stale or foreign id: the client's state is unknown, so it should sync

    async def _run(self, send: Send, stream: Stream, head: int, seen: int | None) -> None:
        # Unknown state, or anything but exactly the current state: an event at once.
        due = seen != head
        sent, last_write = head, time.monotonic()
        while True:
            stream.wake.clear()
            if stream.stopped:
                break
            if due or stream.known > sent:
                sent, due = stream.known, False
                await send({"type": "http.response.body", "body": event_frame(_cursor(stream)), "more_body": True})
                last_write = time.monotonic()
                continue
            left = self.expires_at - time.time()
            if left <= 0:
                await send({"type": "http.response.body", "body": b": token expired\n\n", "more_body": True})
                break
            quiet = last_write + self.events.keepalive - time.monotonic()
            if quiet <= 0:
                await send({"type": "http.response.body", "body": KEEPALIVE_FRAME, "more_body": True})
                last_write = time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(quiet, left)):
                    await stream.wake.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _cursor(stream: Stream) -> str:
    return service.cursor_at(stream.owner, stream.known)


async def _stop_on_disconnect(receive: Receive, stream: Stream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.stop()


_EXAMPLE_CURSOR = "AQAAAAAAAAAHAAAAAAAAAAeFq3Zc3Tw"
_STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The event stream (`text/event-stream`).",
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": f'event: changes\nid: {_EXAMPLE_CURSOR}\ndata: {{"cursor":"{_EXAMPLE_CURSOR}"}}\n\n',
            }
        },
    }
}


@router.get(
    "/events",
    status_code=200,
    operation_id="streamTaskEvents",
    summary="Live change events (Server-Sent Events)",
    description=EVENTS_DESCRIPTION,
    response_class=EventStreamResponse,
    responses={
        **_STREAM_RESPONSE,
        **problem_responses(Unauthorized, ValidationFailed, TooManyStreams, TooManyRequests, ServiceUnavailable),
    },
)
async def stream_events(
    user: CurrentUser,
    db: Db,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=1024,
            description=(
                "The `id` of the last event received, or the `cursor` of your last feed answer: an event "
                "comes at once only if something changed since. Without it, the first event comes at once."
            ),
        ),
    ] = None,
) -> Response:
    """Say when the caller's tasks change (see the description above)."""
    return EventStreamResponse(
        events=request.app.state.events,
        db=db,
        owner=user,
        expires_at=request.scope[TOKEN_EXPIRES_AT],
        last_event_id=last_event_id,
    )
