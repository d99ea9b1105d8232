"""app/routers/hot.py answers exactly as FastAPI's routes do, and serves the requests it should.

Every request here goes to two apps on the same database: the app as it runs (hot routes on) and
the same app with `hot_routes = False` (every request through FastAPI's routes, the reference).
Reads and refusals must match byte for byte (apart from the request id); a write is sent to each
app against its own copy of the same task, and the answers must match once ids and times are set
aside. Which door served a request is read off the ASGI scope afterwards: FastAPI's route handler
needs the exit stack that its AsyncExitStackMiddleware puts there, and the hot routes never pass it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from starlette.types import Receive, Scope, Send

from app.main import TaskAPI, create_app
from app.routers.hot import HotRoutes
from tests.support import auth, hs256_token, new_user
from tests.support.apps import make_settings

FASTAPI_MARK = "fastapi_middleware_astack"
VOLATILE_HEADERS = {"x-request-id", "date"}


class ScopeSpy:
    """The app, keeping the scope of the last request it served."""

    def __init__(self, app: TaskAPI) -> None:
        self.app = app
        self.scope: Scope = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.scope = scope
        await self.app(scope, receive, send)

    @property
    def via_fastapi(self) -> bool:
        """Whether FastAPI's route handler served the last request."""
        return FASTAPI_MARK in self.scope


@dataclass
class Doors:
    """The hot app and the reference app, with a client each."""

    hot: ScopeSpy
    reference: ScopeSpy
    hot_client: httpx.AsyncClient
    reference_client: httpx.AsyncClient


@pytest.fixture
async def doors(database_url: str) -> AsyncIterator[Doors]:
    settings = make_settings(database_url)
    hot, reference = create_app(settings), create_app(settings)
    assert isinstance(hot, TaskAPI) and isinstance(reference, TaskAPI)
    reference.hot_routes = False
    async with hot.router.lifespan_context(hot), reference.router.lifespan_context(reference):
        spies = ScopeSpy(hot), ScopeSpy(reference)
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=spy), base_url="http://testserver") for spy in spies
        ]
        async with clients[0], clients[1]:
            yield Doors(spies[0], spies[1], clients[0], clients[1])


def _comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((name, value) for name, value in response.headers.items() if name not in VOLATILE_HEADERS)
    return response.status_code, headers, response.content


async def _both(doors: Doors, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, bool]:
    """Send the request to both apps; assert identical answers; return the hot app's and its door."""
    hot = await doors.hot_client.request(method, url, **kwargs)
    via_fastapi = doors.hot.via_fastapi
    reference = await doors.reference_client.request(method, url, **kwargs)
    assert doors.reference.via_fastapi
    assert _comparable(hot) == _comparable(reference), (method, url, hot.text, reference.text)
    return hot, via_fastapi


async def _create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/api/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_reads_and_refusals_match_fastapi_byte_for_byte(doors: Doors) -> None:
    owner, stranger = new_user(), new_user()
    headers = auth(owner)
    tasks = [
        await _create(doors.hot_client, headers, title=f"task {i}", priority=("low", "high")[i % 2]) for i in range(5)
    ]
    foreign = await _create(doors.hot_client, auth(stranger), title="not yours")
    task_id = tasks[0]["id"]
    first_page, _ = await _both(doors, "GET", "/api/tasks?limit=2&sort=title", headers=headers)
    cursor = first_page.json()["next_cursor"]
    assert cursor

    served_hot = [
        ("GET", "/api/tasks"),
        ("GET", "/api/tasks?status=pending&priority=high&sort=-priority&limit=3&offset=1"),
        ("GET", f"/api/tasks?limit=2&sort=title&cursor={cursor}"),
        ("GET", "/api/tasks?q=task%203&due_after=2020-01-01T00:00:00Z"),
        ("GET", f"/api/tasks/{task_id}"),
        ("GET", f"/api/tasks/{task_id.upper()}"),
        # Valid input, refused by the services or the token check: the same handlers answer.
        ("GET", f"/api/tasks/{foreign['id']}"),  # 403
        ("GET", f"/api/tasks/{uuid.uuid4()}"),  # 404
        ("GET", "/api/tasks?limit=2&sort=-title&cursor=" + cursor),  # cursor of another sort: 422
    ]
    for method, url in served_hot:
        response, via_fastapi = await _both(doors, method, url, headers=headers)
        assert not via_fastapi, url
        assert response.status_code in (200, 403, 404, 422), response.text

    declined = {
        "/api/tasks?limit=0": 422,
        "/api/tasks?limit=101": 422,
        "/api/tasks?unknown=1": 422,
        "/api/tasks?q=": 422,
        "/api/tasks?cursor=abc&offset=3": 422,
        "/api/tasks?due_before=tomorrow": 422,
        f"/api/tasks/{task_id.replace('-', '')}": 200,  # another spelling of a UUID: FastAPI reads it
        "/api/tasks/not-a-uuid": 422,
        f"/api/tasks/{task_id}/": 307,  # redirect_slashes
    }
    for url, status in declined.items():
        response, via_fastapi = await _both(doors, "GET", url, headers=headers)
        assert via_fastapi, url
        assert response.status_code == status, url
    # A repeated parameter: FastAPI takes the last value.
    response, via_fastapi = await _both(doors, "GET", "/api/tasks?status=completed&status=pending", headers=headers)
    assert via_fastapi and response.json()["total"] == len(tasks)

    for authorization in (
        None,
        "Bearer",
        "Basic abc",
        "Bearer not.a.token",
        f"Bearer {hs256_token(owner, exp_in=-60)}",
    ):
        request_headers = {} if authorization is None else {"Authorization": authorization}
        for url in ("/api/tasks", f"/api/tasks/{task_id}"):
            response, via_fastapi = await _both(doors, "GET", url, headers=request_headers)
            assert response.status_code == 401
            assert not via_fastapi
    # HEAD and a repeated Authorization header are FastAPI's to answer.
    _, via_fastapi = await _both(doors, "HEAD", f"/api/tasks/{task_id}", headers=headers)
    assert via_fastapi
    repeated = httpx.Headers([("Authorization", headers["Authorization"]), ("Authorization", "Bearer x")])
    response, via_fastapi = await _both(doors, "GET", "/api/tasks", headers=repeated)
    assert via_fastapi and response.status_code == 200


def _without_volatile(response: httpx.Response, *ids: str) -> tuple[int, list[tuple[str, str]], Any]:
    """The answer with ids, times and the request id set aside (each app wrote its own task)."""
    headers = sorted((name, value) for name, value in response.headers.items() if name not in VOLATILE_HEADERS)
    text = response.text
    for index, value in enumerate(ids):
        text = text.replace(value, f"<id{index}>")
    body = orjson.loads(text) if text and response.headers.get("content-type", "").endswith("json") else text
    if isinstance(body, dict):
        for key in ("created_at", "updated_at"):
            if key in body:
                body[key] = "<time>"
    headers = [(name, value.replace(ids[0], "<id0>") if ids else value) for name, value in headers]
    return response.status_code, headers, body


async def test_writes_match_fastapi(doors: Doors) -> None:
    owner = new_user()
    headers = auth(owner)
    json_headers = {**headers, "Content-Type": "application/json"}
    # (method, body, extra headers, served by the hot routes?)
    cases: list[tuple[str, bytes | None, dict[str, str], bool]] = [
        ("PATCH", b'{"status": "completed"}', {}, True),
        ("PATCH", b'{"description": null, "due_date": "2026-12-01T18:00:00+01:00"}', {"If-Match": '"1"'}, True),
        ("PATCH", b'{"title": "new"}', {"If-Match": '"7", "8"'}, True),  # 412
        ("PATCH", b"{}", {}, True),
        ("PATCH", b'{"title": "   "}', {}, False),
        ("PATCH", b'{"title": null}', {}, False),
        ("PATCH", b'{"status": "done"}', {}, False),
        ("PATCH", b'{"owner": "someone"}', {}, False),
        ("PATCH", b'{"title": "x",}', {}, False),  # not JSON
        ("PATCH", b'{"title": NaN}', {}, False),  # json.loads reads it, orjson does not
        ("PATCH", b"[]", {}, False),
        ("PATCH", b"", {}, False),
        ("PATCH", b'{"title": "x"}', {"Content-Type": "text/plain"}, False),
        ("PATCH", b'{"title": "x"}', {"Content-Type": "application/merge-patch+json"}, False),
        ("PATCH", b'{"title": "x"}', {"Content-Type": "application/json; charset=utf-8"}, True),
        ("PUT", b'{"title": "replaced", "priority": "high"}', {}, True),
        ("PUT", b'{"priority": "high"}', {}, False),
        ("PUT", b'{"title": "replaced"}', {"Authorization": "Bearer nope"}, True),  # 401
        ("DELETE", None, {"If-Match": '"99"'}, True),  # 412
        ("DELETE", None, {}, True),
    ]
    for method, content, extra, hot_expected in cases:
        answers = []
        for spy, client in ((doors.hot, doors.hot_client), (doors.reference, doors.reference_client)):
            task = await _create(client, headers, title="same", description="d", priority="low")
            response = await client.request(
                method, f"/api/tasks/{task['id']}", content=content, headers={**json_headers, **extra}
            )
            answers.append(_without_volatile(response, task["id"]))
            if spy is doors.hot:
                assert spy.via_fastapi is not hot_expected, (method, content, extra)
        assert answers[0] == answers[1], (method, content, extra)

    creations: list[tuple[bytes, dict[str, str], bool]] = [
        (b'{"title": "created", "due_date": "2026-12-01T17:00:00Z"}', {}, True),
        (b'{"title": "created"}', {"Idempotency-Key": "<fresh>"}, False),
        (b'{"title": ""}', {}, False),
        (b'{"title": "created", "id": "00000000-0000-0000-0000-000000000000"}', {}, False),
        (b'{"title": "created"}', {"Authorization": ""}, True),  # 401
    ]
    for content, extra, hot_expected in creations:
        answers = []
        for spy, client in ((doors.hot, doors.hot_client), (doors.reference, doors.reference_client)):
            # Each app its own key: both apps share the database, so one key would make the second a replay.
            fresh = {name: str(uuid.uuid4()) if value == "<fresh>" else value for name, value in extra.items()}
            response = await client.post("/api/tasks", content=content, headers={**json_headers, **fresh})
            created_id = response.json().get("id", "-") if response.status_code == 201 else "-"
            answers.append(_without_volatile(response, created_id))
            if spy is doors.hot:
                assert spy.via_fastapi is not hot_expected, (content, extra)
        assert answers[0] == answers[1], (content, extra)


async def test_a_declined_body_reaches_fastapi_whole(doors: Doors) -> None:
    # A body sent in several chunks that the hot routes read and then declined is replayed in full.
    headers = {**auth(new_user()), "Content-Type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"title": ', b'"chunked", ', b'"status": "nope"}'):
            yield part

    response = await doors.hot_client.post("/api/tasks", content=chunks(), headers=headers)
    assert doors.hot.via_fastapi
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "status"]


def test_hot_routes_know_every_endpoint_they_serve() -> None:
    app = create_app(make_settings("sqlite:///:memory:"))
    # Built from the app's routes: an endpoint renamed in app/routers/tasks.py fails here, not in production.
    HotRoutes(app.router, app.routes)
    with pytest.raises(KeyError):
        HotRoutes(app.router, [route for route in app.routes if getattr(route, "name", "") != "update_task"])
