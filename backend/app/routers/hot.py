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
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.jwt import authenticate
from app.database import Database
from app.routers import tasks
from app.schemas.task import TaskCreate, TaskListQuery, TaskPatch, TaskReplace

_COLLECTION = tasks.COLLECTION_PATH
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

_Model = TypeVar("_Model", bound=BaseModel)


class _Decline(Exception):
    """The request is not one this layer serves: FastAPI's route answers it."""


class _Body:
    """A request's body, read as JSON on demand; every message read is kept so that a declined
    request reaches FastAPI's route whole.
    """

    __slots__ = ("messages", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.messages: list[Message] = []

    async def json(self, headers: dict[bytes, bytes]) -> Any:
        """The JSON document of an `application/json` body, else _Decline."""
        content_type = headers.get(_CONTENT_TYPE)
        if content_type is None or content_type.split(b";", 1)[0].strip().lower() != _JSON:
            raise _Decline
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            self.messages.append(message)
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

    def replay(self) -> Receive:
        """`receive` with the messages already read put back in front."""
        if not self.messages:
            return self.receive
        pending, receive = list(self.messages), self.receive

        async def replayed() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return replayed


# A hot route in two steps. `parse` checks the request's inputs as FastAPI would (raising _Decline
# for anything it cannot vouch for) and reads nothing else; `act` runs once the token is checked,
# with the owner, and builds the response with app/routers/tasks.py.
Parse = Callable[[Scope, dict[bytes, bytes], _Body], Awaitable[Any]]
Act = Callable[[Database, str, Scope, dict[bytes, bytes], Any], Awaitable[Response]]


class _Hot(NamedTuple):
    route: APIRoute
    parse: Parse
    act: Act


async def _no_input(scope: Scope, headers: dict[bytes, bytes], body: _Body) -> None:
    return None  # the path's task id is all (the route match checked it)


async def _list_query(scope: Scope, headers: dict[bytes, bytes], body: _Body) -> TaskListQuery:
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs) or not _QUERY_FIELDS.issuperset(params):
        raise _Decline
    return _valid(TaskListQuery, params)


async def _create_body(scope: Scope, headers: dict[bytes, bytes], body: _Body) -> TaskCreate:
    if _IDEMPOTENCY_KEY in headers:
        raise _Decline  # the transactional path, rarely taken: FastAPI's route validates the key
    return _valid(TaskCreate, await body.json(headers))


async def _replacement(scope: Scope, headers: dict[bytes, bytes], body: _Body) -> dict[str, Any]:
    return _valid(TaskReplace, await body.json(headers)).model_dump()


async def _patch_changes(scope: Scope, headers: dict[bytes, bytes], body: _Body) -> dict[str, Any]:
    return _valid(TaskPatch, await body.json(headers)).changes()


async def _list(db: Database, user: str, scope: Scope, headers: dict[bytes, bytes], query: Any) -> Response:
    return await tasks.list_page(db, user, query)


async def _create(db: Database, user: str, scope: Scope, headers: dict[bytes, bytes], body: Any) -> Response:
    return await tasks.create(db, user, body, None)


async def _get(db: Database, user: str, scope: Scope, headers: dict[bytes, bytes], _: Any) -> Response:
    return await tasks.read(db, user, _task_id(scope))


async def _update(db: Database, user: str, scope: Scope, headers: dict[bytes, bytes], changes: Any) -> Response:
    return await tasks.update(db, user, _task_id(scope), changes, _text(headers.get(_IF_MATCH)))


async def _delete(db: Database, user: str, scope: Scope, headers: dict[bytes, bytes], _: Any) -> Response:
    return await tasks.remove(db, user, _task_id(scope), _text(headers.get(_IF_MATCH)))


class HotRoutes:
    """ASGI layer in front of FastAPI's router that serves the hot task routes itself (see the module)."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        by_name = {route.name: route for route in routes if isinstance(route, APIRoute)}
        self._collection = {
            "GET": _Hot(by_name["list_tasks"], _list_query, _list),
            "POST": _Hot(by_name["create_task"], _create_body, _create),
        }
        self._item = {
            "GET": _Hot(by_name["get_task"], _no_input, _get),
            "PUT": _Hot(by_name["replace_task"], _replacement, _update),
            "PATCH": _Hot(by_name["update_task"], _patch_changes, _update),
            "DELETE": _Hot(by_name["delete_task"], _no_input, _delete),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            hot = None
            if path == _COLLECTION:
                hot = self._collection.get(scope["method"])
            elif path.startswith(_ITEM_PREFIX) and _UUID.fullmatch(path, len(_ITEM_PREFIX)):
                hot = self._item.get(scope["method"])
            if hot is not None:
                # What FastAPI's route match leaves in the scope (metrics label requests by route).
                scope["route"], scope["endpoint"] = hot.route, hot.route.endpoint
                if path != _COLLECTION:
                    scope["path_params"] = {"task_id": path[len(_ITEM_PREFIX) :]}
                await self._serve(hot, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, hot: _Hot, scope: Scope, receive: Receive, send: Send) -> None:
        body = _Body(receive)
        try:
            headers = _headers(scope)
            value = await hot.parse(scope, headers, body)
        except _Decline:
            await self.app(scope, body.replay(), send)
            return
        user = await _user(scope, headers)
        response = await hot.act(scope["app"].state.database, user, scope, headers, value)
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
