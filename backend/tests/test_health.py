"""GET /health, and 503 + recovery when the database goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from app.config import Settings
from tests.support import TCPProxy, assert_problem, auth, new_user
from tests.support.apps import http_client, make_settings, running_app


async def test_health_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_health_needs_no_token_and_sets_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"


async def test_sqlite_unopenable_is_503(tmp_path: object) -> None:
    settings = make_settings("sqlite:////proc/no-such-dir/tasks.db")
    async with running_app(settings) as app, http_client(app) as client:
        response = await client.get("/health")
        assert_problem(response, 503)
        assert response.headers["retry-after"].isdigit()
        listed = await client.get("/api/tasks", headers=auth(new_user()))
        assert listed.status_code == 503
        assert "proc" not in listed.text


@pytest.mark.parametrize("mode", ["refuse", "hang"])
async def test_database_down_gives_503_then_recovers(database_url: str, backend: str, mode: str) -> None:
    if backend != "postgresql":
        pytest.skip("a network cut needs a database server")
    parts = urlsplit(database_url)
    proxy = TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    credentials = f"{parts.username}:{parts.password}" if parts.password else f"{parts.username}"
    proxied = database_url.replace(parts.netloc, f"{credentials}@127.0.0.1:{proxy.port}")
    if parts.port == 6432:  # TEST_DATABASE=pooler: the proxy port hides that a pooler is behind it
        proxied += "&pgbouncer=true"
    settings = make_settings(proxied, DB_CONNECT_TIMEOUT=1.5)
    user = auth(new_user())
    try:
        async with running_app(settings) as app, http_client(app) as client:
            assert (await client.post("/api/tasks", json={"title": "before"}, headers=user)).status_code == 201

            await proxy.cut(mode)
            for path, headers in (("/health", {}), ("/api/tasks", user)):
                response = await asyncio.wait_for(client.get(path, headers=headers), timeout=10)
                assert_problem(response, 503)
                assert response.headers["retry-after"].isdigit()
                assert str(proxy.port) not in response.text and "postgres" not in response.text

            await proxy.restore()
            # The service heals by itself: the pool throws away dead connections on checkout.
            response = await client.get("/api/tasks", headers=user)
            assert response.status_code == 200
            assert [t["title"] for t in response.json()["items"]] == ["before"]
            assert (await client.get("/health")).status_code == 200
    finally:
        await proxy.close()


@pytest.mark.slow
async def test_health_survives_an_event_loop_stall(settings_factory: Callable[..., Settings]) -> None:
    # The ping times out after DB_CONNECT_TIMEOUT + 1 = 1.5 s; the loop is then blocked for longer
    # at every point of the ping in turn. The database answered all along: always 200.
    async with running_app(settings_factory(DB_CONNECT_TIMEOUT=0.5)) as app, http_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        statuses = []
        for steps in range(4):
            pending = asyncio.create_task(client.get("/health"))
            for _ in range(steps):
                await asyncio.sleep(0)  # let the request get that far into the ping
            time.sleep(1.8)  # noqa: ASYNC251 - the stall under test: the loop does nothing else
            statuses.append((await pending).status_code)
        assert statuses == [200] * 4
