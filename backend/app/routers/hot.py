"""The hot task routes (list, get, create, replace, update, delete) without FastAPI's per-request work.

For every request FastAPI builds a Request, solves the route's dependency graph and validates each
parameter on its own, which on these short requests costs more CPU than the database work
(`backend/scripts/instructions.py` counts it). This layer does the same work directly, with the same
parts: the same models validate the same values (TaskListQuery, TaskCreate, TaskReplace, TaskPatch),
`authenticate` checks the token and charges the rate limit, the functions of app/routers/tasks.py
call the services and build the response, and an exception reaches the same handlers (this layer runs
inside Starlette's ExceptionMiddleware). `scope["route"]` is the FastAPI route, so metrics and logs
cannot tell the difference.

It answers only a request whose inputs it has checked as FastAPI would and found valid. Anything else
(a value that fails validation, an unknown or repeated query parameter or header, a content type
other than application/json, a body orjson refuses, an Idempotency-Key, HEAD, a root_path) goes on to
the FastAPI route unchanged, body included, and is answered exactly as before, 422s and all. It
declines before the token is checked, so nothing is counted twice. The FastAPI routes stay the
reference and the source of the OpenAPI document: tests/test_hot_routes.py sends the same requests to
an app with this layer and one without and compares the answers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.jwt import authenticate
from app.routers import tasks
from app.schemas.task import TaskCreate, TaskListQuery, TaskPatch, TaskReplace

_COLLECTION = "/api/tasks"
_ITEM_PREFIX = tasks.TASK_PATH
# The canonical form, which uuid.UUID and pydantic read alike (other spellings go to FastAPI).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_QUERY_FIELDS = frozenset(TaskListQuery.model_fields)
# The request headers these routes read; a request naming one twice goes to FastAPI.
_AUTHORIZATION = b"authorization"
_CONTENT_TYPE = b"content-type"
_IF_MATCH = b"if-match"
_IDEMPOTENCY_KEY = b"idempotency-key"
_READ_HEADERS = frozenset({_AUTHORIZATION, _CONTENT_TYPE, _IF_MATCH, _IDEMPOTENCY_KEY})
_JSON = b"application/json"
# The FastAPI endpoints (in app/routers/tasks.py) whose requests this layer can serve.
_ENDPOINTS = ("list_tasks", "create_task", "get_task", "replace_task", "update_task", "delete_task")

_Model = TypeVar("_Model", bound=BaseModel)
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Decline(Exception):
    """The request is not one this layer serves: FastAPI's route answers it."""


class HotRoutes:
    """ASGI layer in front of FastAPI's router that serves the hot task routes itself (see the module)."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        by_name = {route.name: route for route in routes if isinstance(route, APIRoute)}
        self._routes = {name: by_name[name] for name in _ENDPOINTS}
        self._collection: dict[str, tuple[APIRoute, Handler]] = {
            "GET": (self._routes["list_tasks"], self._list),
            "POST": (self._routes["create_task"], self._create),
        }
        self._item: dict[str, tuple[APIRoute, Handler]] = {
            "GET": (self._routes["get_task"], self._get),
            "PUT": (self._routes["replace_task"], self._replace),
            "PATCH": (self._routes["update_task"], self._patch),
            "DELETE": (self._routes["delete_task"], self._delete),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            found = None
            if path == _COLLECTION:
                found = self._collection.get(scope["method"])
            elif path.startswith(_ITEM_PREFIX) and _UUID.fullmatch(path, len(_ITEM_PREFIX)):
                found = self._item.get(scope["method"])
            if found is not None:
                route, handler = found
                # What FastAPI's route match leaves in the scope (metrics label requests by route).
                scope["route"], scope["endpoint"] = route, route.endpoint
                if path != _COLLECTION:
                    scope["path_params"] = {"task_id": path[len(_ITEM_PREFIX) :]}
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _list(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = _headers(scope)
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            params = dict(pairs)
            if len(params) != len(pairs) or not _QUERY_FIELDS.issuperset(params):
                raise _Decline
            query = _valid(TaskListQuery, params)
        except _Decline:
            await self.app(scope, receive, send)
            return
        user = await _user(scope, headers)
        response = await tasks.list_page(scope["app"].state.database, user, query)
        await response(scope, receive, send)

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = _headers(scope)
        except _Decline:
            await self.app(scope, receive, send)
            return
        user = await _user(scope, headers)
        response = await tasks.read(scope["app"].state.database, user, _task_id(scope))
        await response(scope, receive, send)

    async def _delete(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = _headers(scope)
        except _Decline:
            await self.app(scope, receive, send)
            return
        user = await _user(scope, headers)
        if_match = _text(headers.get(_IF_MATCH))
        response = await tasks.remove(scope["app"].state.database, user, _task_id(scope), if_match)
        await response(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []
        try:
            headers = _headers(scope)
            if _IDEMPOTENCY_KEY in headers:
                raise _Decline  # the transactional path, rarely taken: FastAPI's route validates the key
            body = _valid(TaskCreate, await _json_body(headers, receive, messages))
        except _Decline:
            await self.app(scope, _replay(messages, receive), send)
            return
        user = await _user(scope, headers)
        response = await tasks.create(scope["app"].state.database, user, body, None)
        await response(scope, receive, send)

    async def _replace(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []
        try:
            headers = _headers(scope)
            body = _valid(TaskReplace, await _json_body(headers, receive, messages))
        except _Decline:
            await self.app(scope, _replay(messages, receive), send)
            return
        await self._update(scope, receive, send, headers, body.model_dump())

    async def _patch(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []
        try:
            headers = _headers(scope)
            body = _valid(TaskPatch, await _json_body(headers, receive, messages))
        except _Decline:
            await self.app(scope, _replay(messages, receive), send)
            return
        await self._update(scope, receive, send, headers, body.changes())

    async def _update(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], changes: dict[str, Any]
    ) -> None:
        user = await _user(scope, headers)
        if_match = _text(headers.get(_IF_MATCH))
        response = await tasks.update(scope["app"].state.database, user, _task_id(scope), changes, if_match)
        await response(scope, receive, send)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # The servers give header names in lower case, as Starlette's Headers expects them too.
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _READ_HEADERS:
            if name in found:
                raise _Decline
            found[name] = value
    return found


def _text(value: bytes | None) -> str | None:
    # Header values as Starlette decodes them.
    return None if value is None else value.decode("latin-1")


async def _user(scope: Scope, headers: dict[bytes, bytes]) -> str:
    state = scope["app"].state
    authorization = _text(headers.get(_AUTHORIZATION)) or ""
    return await authenticate(scope, authorization, state.verifier, state.rate_limiter)


def _task_id(scope: Scope) -> uuid.UUID:
    return uuid.UUID(scope["path_params"]["task_id"])


def _valid(model: type[_Model], value: Any) -> _Model:
    try:
        return model.model_validate(value)
    except ValidationError:
        raise _Decline from None


async def _json_body(headers: dict[bytes, bytes], receive: Receive, messages: list[Message]) -> Any:
    """The request's JSON document; every message read is kept in `messages` for a replay."""
    content_type = headers.get(_CONTENT_TYPE)
    if content_type is None or content_type.split(b";", 1)[0].strip().lower() != _JSON:
        raise _Decline
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            raise _Decline  # the client left mid-body: FastAPI's route deals with it as ever
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    try:
        # Where orjson reads a document, it reads what json.loads (FastAPI's parser) does; what it
        # refuses (NaN, integers over 64 bits, lone surrogates, other encodings) FastAPI decides.
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise _Decline from None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` with the messages already read put back in front."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
