"""MCP tool calls count against the caller's rate limits as the REST operations they perform."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support import auth, new_user
from tests.support.apps import http_client, make_settings, running_app

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def call(client: httpx.AsyncClient, user: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = await client.post("/mcp", json=body, headers={**HEADERS, **auth(user)})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


async def test_tool_calls_count_as_the_rest_operations_they_perform(database_url: str) -> None:
    settings = make_settings(
        database_url,
        RATE_LIMIT_ENABLED=True,
        RATE_LIMIT_READ="2/minute",
        RATE_LIMIT_WRITE="3/minute",
        MCP_ALLOWED_HOSTS="testserver",
    )
    user, other = new_user(), new_user()
    async with running_app(settings) as app, http_client(app) as client:
        # A batch of three creates is three writes: the write budget is spent.
        added = await call(client, user, "add_tasks", {"tasks": [{"title": "a"}, {"title": "b"}, {"title": "c"}]})
        assert not added.get("isError"), added
        refused = await call(client, user, "add_tasks", {"tasks": [{"title": "d"}]})
        assert refused["isError"] and "Retry after" in refused["content"][0]["text"], refused
        # The same budget as REST: a POST is refused too, while reads have their own budget.
        assert (await client.post("/api/tasks", json={"title": "e"}, headers=auth(user))).status_code == 429
        found = await call(client, user, "find_tasks", {})
        assert not found.get("isError") and found["structuredContent"]["total"] == 3, found
        assert (await client.get("/api/tasks", headers=auth(user))).status_code == 200
        assert (await call(client, user, "find_tasks", {}))["isError"]
        # Another user has budgets of their own.
        assert not (await call(client, other, "find_tasks", {})).get("isError")
