"""Request ids, structured access logs without secrets, body limits and CORS."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app import middleware
from app.main import create_app
from app.middleware import RequestContextMiddleware
from tests.support import SECRET, assert_problem, auth, captured_logs, hs256_token, new_user
from tests.support.apps import http_client, make_settings


async def test_request_id_is_generated_or_echoed(client: httpx.AsyncClient) -> None:
    generated = await client.get("/api/tasks", headers=auth(new_user()))
    assert len(generated.headers["x-request-id"]) >= 16
    echoed = await client.get("/api/tasks", headers={**auth(new_user()), "X-Request-ID": "req-42"})
    assert echoed.headers["x-request-id"] == "req-42"
    forged = await client.get("/health", headers={"X-Request-ID": 'bad id\n{"level":"x"}'})
    assert forged.headers["x-request-id"] != 'bad id\n{"level":"x"}'


async def test_access_log_is_one_json_line_per_request_without_secrets(client: httpx.AsyncClient) -> None:
    token = hs256_token(new_user())
    with captured_logs() as lines:
        await client.get("/api/tasks?q=findme", headers={"Authorization": f"Bearer {token}", "X-Request-ID": "r-1"})
        await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}x"})  # bad signature
        await client.post("/api/tasks", json={"title": token}, headers={"Authorization": f"Bearer {token}"})
    access = [json.loads(line) for line in lines if '"app.access"' in line]
    assert len(access) == 3
    first = access[0]
    assert {"method", "path", "status", "duration_ms", "request_id"} <= first.keys()
    assert (first["method"], first["path"], first["status"], first["request_id"]) == ("GET", "/api/tasks", 200, "r-1")
    assert [entry["status"] for entry in access] == [200, 401, 201]
    everything = "\n".join(lines)
    assert token not in everything and token.split(".")[1] not in everything
    assert SECRET not in everything


async def test_declared_oversized_body_is_413_before_reading(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/tasks",
        content=b"{}",
        headers={**auth(new_user()), "Content-Type": "application/json", "Content-Length": str(2 * 1024 * 1024)},
    )
    assert_problem(response, 413)


async def test_cors_allows_only_configured_origins(client: httpx.AsyncClient) -> None:
    preflight = {"Access-Control-Request-Method": "PATCH", "Access-Control-Request-Headers": "authorization,if-match"}
    allowed = await client.options("/api/tasks", headers={"Origin": "http://localhost:3000", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    denied = await client.options("/api/tasks", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in denied.headers
    simple = await client.get("/api/tasks", headers={**auth(new_user()), "Origin": "http://localhost:3000"})
    assert simple.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "etag" in simple.headers["access-control-expose-headers"].lower()


async def test_unexpected_error_is_problem_500_with_request_id_and_one_log_line(database_url: str) -> None:
    app = create_app(make_settings(database_url))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail that must not leak")

    async with app.router.lifespan_context(app), http_client(app) as client:
        with captured_logs() as lines:
            response = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert_problem(response, 500)
    assert response.headers["x-request-id"] == "boom-1"
    assert "internal detail" not in response.text
    errors = [json.loads(line) for line in lines if '"level":"ERROR"' in line]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "boom-1"


async def test_every_response_is_nosniff_and_api_responses_are_no_store(client: httpx.AsyncClient) -> None:
    user = auth(new_user())
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    responses = {
        "list": await client.get("/api/tasks", headers=user),
        "created": await client.post("/api/tasks", json={"title": "cache me not"}, headers=user),
        "401": await client.get("/api/tasks"),
        "422": await client.post("/api/tasks", json={}, headers=user),
        "404 task": await client.get("/api/tasks/00000000-0000-4000-8000-000000000000", headers=user),
        "404 route": await client.get("/nowhere"),
        "405": await client.put("/health"),
        "413": await client.post("/api/tasks", content=b"{}", headers={**user, "Content-Length": str(2 << 20)}),
        "preflight": await client.options("/api/tasks", headers=preflight),
        "health": await client.get("/health"),
    }
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["cache-control"] == "no-store", name
    docs = await client.get("/openapi.json")
    assert docs.headers["x-content-type-options"] == "nosniff"
    assert "cache-control" not in docs.headers  # public and the same for everyone


async def test_refused_preflight_is_403_problem(client: httpx.AsyncClient) -> None:
    cases = {
        "origin": {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        "method": {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "TRACE"},
        "headers": {
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-secret",
        },
    }
    for failure, headers in cases.items():
        response = await client.options("/api/tasks", headers=headers)
        body = assert_problem(response, 403)
        assert body["detail"] == f"Disallowed CORS {failure}.", body
        assert "access-control-allow-origin" not in response.headers or failure != "origin"
        assert "evil" not in response.text
        assert response.headers["vary"].startswith("Origin")


# --- cancellation on disconnect (the real disconnect: tests/test_statement_limits.py) -------------


async def slow(request: Request) -> PlainTextResponse:
    await request.body()
    await asyncio.sleep(middleware.WATCH_AFTER_SECONDS * 3)  # long enough for the disconnect watcher to start
    # Work after the last byte (as a FileResponse closing its file): the handler is still running
    # when the client has its whole answer.
    return PlainTextResponse("done", background=BackgroundTask(asyncio.sleep, 0))


def slow_client() -> httpx.AsyncClient:
    routes = [Route("/slow", slow, methods=["GET", "POST"])]
    app = RequestContextMiddleware(Starlette(routes=routes), max_body_bytes=1024)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


# The watcher's delay is read when a body is complete; a short one here (instead of the real 1 s)
# keeps the same order of events (watcher started, then the answer, then the disconnect) in a tenth
# of the time.
WATCH_AFTER_IN_TESTS = 0.1


async def test_disconnect_after_the_answer_cancels_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx's in-process transport runs the app in the caller's task and reports a disconnect once
    # the response is complete: the watcher must not cancel anything then.
    monkeypatch.setattr(middleware, "WATCH_AFTER_SECONDS", WATCH_AFTER_IN_TESTS)
    async with slow_client() as c:
        for method in ("GET", "POST"):
            response = await c.request(method, "/slow", content=b"x" if method == "POST" else None)
            assert response.text == "done"
            await asyncio.sleep(middleware.WATCH_AFTER_SECONDS * 2)  # a cancellation would surface here
