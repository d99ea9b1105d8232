"""The MCP server at /mcp, end to end: the official Python MCP client (and the TypeScript SDK) over
real Streamable HTTP against the production server process with two workers, on each database.

One server per database for the whole module (starting one costs seconds on a small machine); every
test uses its own fresh users, so the tests are independent and run in any order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from fastapi import FastAPI
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from app.config import Settings
from app.main import create_app
from app.mcp.export import CONTRACT_PATH
from tests.support import auth, bearer, hs256_token, new_user
from tests.support.apps import http_client, running_app
from tests.support.npm import node_with_packages
from tests.support.servers import APIServer

# A real server with two workers (and Node for the TypeScript client): left out of `make test-fast`.
pytestmark = pytest.mark.slow

PUBLIC_HOST = "tasks.example.test"
TS_CLIENT_DIR = Path(__file__).resolve().parent / "mcpclient"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[APIServer]:
    """The API as production runs it, two workers, so consecutive calls land on either process.

    No leeway on `exp` (the mid-session expiry test need not wait 30 s), and one public host name
    allowed besides localhost, as behind a proxy.
    """
    log = tmp_path_factory.mktemp("mcp") / "api.log"
    settings = {"JWT_LEEWAY": "0", "MCP_ALLOWED_HOSTS": PUBLIC_HOST}
    with APIServer(database_url, log, workers=2, settings=settings) as api:
        yield api
    # Whatever the tests sent, the server never failed: no 5xx, nothing logged as an error.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("status", 0) >= 500 or line["level"] in ("ERROR", "CRITICAL")]


@pytest.fixture
async def rest(server: APIServer) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client for the same server (REST, and raw POSTs to /mcp)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


@asynccontextmanager
async def connect(url: str, token: str, *, mode: str = "auto") -> AsyncIterator[Client]:
    """The official Python client, bearer header on every request."""
    async with (
        httpx2.AsyncClient(headers=bearer(token), timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


@asynccontextmanager
async def agent(server: APIServer, user: str, **kwargs: Any) -> AsyncIterator[Client]:
    """An MCP client acting for `user`."""
    async with connect(f"{server.url}/mcp", hs256_token(user), **kwargs) as client:
        yield client


def text(result: CallToolResult) -> str:
    """The text summary (or error) of a tool result."""
    assert len(result.content) == 1 and result.content[0].type == "text", result.content
    return result.content[0].text


async def ok(client: Client, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """Call `tool`, expecting success with structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text(result)
    assert isinstance(result.structured_content, dict)
    return result


async def fails(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """Call `tool`, expecting a tool error result (not a protocol error); its text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    assert result.structured_content is None
    return text(result)


def items(result: CallToolResult) -> list[dict[str, Any]]:
    """The tasks of a result."""
    assert isinstance(result.structured_content, dict)
    found: list[dict[str, Any]] = result.structured_content["items"]
    return found


def etags(result: CallToolResult) -> dict[str, str]:
    """The ETags a result carries in `_meta`, by task id."""
    assert result.meta is not None
    tags: dict[str, str] = result.meta["etags"]
    return tags


async def create(rest: httpx.AsyncClient, user: str, **fields: Any) -> dict[str, Any]:
    """A task created over REST."""
    response = await rest.post("/api/tasks", json={"title": "a task", **fields}, headers=auth(user))
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def rest_get(rest: httpx.AsyncClient, user: str, task_id: str) -> httpx.Response:
    """GET /api/tasks/{id} as `user`."""
    return await rest.get(f"/api/tasks/{task_id}", headers=auth(user))


async def rest_count(rest: httpx.AsyncClient, user: str) -> int:
    """How many tasks `user` has, per REST."""
    response = await rest.get("/api/tasks", headers=auth(user))
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


# --- listing and transport ----------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "protocol"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_list_tools_equals_committed_contract(server: APIServer, mode: str, protocol: str) -> None:
    committed = json.loads(CONTRACT_PATH.read_text(encoding="utf-8"))["tools"]
    async with agent(server, new_user(), mode=mode) as client:
        assert client.protocol_version == protocol
        listed = (await client.list_tools()).tools
    assert [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed] == committed


async def test_post_mcp_lists_tools_without_redirect_or_handshake(rest: httpx.AsyncClient) -> None:
    # The README's curl: a stateless server needs no initialize (and no session id) first.
    response = await rest.post("/mcp", json=TOOLS_LIST, headers={**ACCEPT, **auth(new_user())})
    assert response.status_code == 200, response.text
    assert "mcp-session-id" not in response.headers
    names = [tool["name"] for tool in response.json()["result"]["tools"]]
    assert names == ["find_tasks", "get_task", "add_tasks", "update_tasks", "complete_tasks", "delete_tasks"]


async def test_get_and_delete_mcp_are_405(rest: httpx.AsyncClient) -> None:
    # Stateless: no stream would ever carry anything, and there is no session to end.
    for method in ("GET", "DELETE"):
        response = await rest.request(method, "/mcp", headers={"Accept": "text/event-stream", **auth(new_user())})
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "POST"


# --- each tool ------------------------------------------------------------------------------------


async def test_add_tasks_returns_tasks_as_rest_does(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    new = [
        {"title": "  Call Sam  ", "priority": "high", "due_date": "2026-12-01T18:00:00+01:00"},
        {"title": "Write the report", "description": "Q4", "status": "in_progress"},
    ]
    async with agent(server, user) as client:
        result = await ok(client, "add_tasks", {"tasks": new})
    added = items(result)
    assert [task["title"] for task in added] == ["Call Sam", "Write the report"]
    assert added[0]["due_date"] == "2026-12-01T17:00:00Z"
    assert {task["user_id"] for task in added} == {user}
    for task in added:
        response = await rest_get(rest, user, task["id"])
        assert response.json() == task
        assert etags(result)[task["id"]] == response.headers["etag"] == '"1"'
        assert task["id"] in text(result)
    assert text(result).startswith("Added 2 tasks:")


async def test_find_tasks_matches_rest_listing(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    for index in range(23):
        await create(
            rest,
            user,
            title=f"task {index:02d} {'report' if index % 3 == 0 else 'call'}",
            priority=("low", "medium", "high")[index % 3],
            status=("pending", "in_progress", "completed")[index % 3],
            due_date=f"2026-12-{index + 1:02d}T09:00:00Z" if index % 2 else None,
        )
    queries: list[dict[str, Any]] = [
        {},
        {"status": "completed"},
        {"priority": "high", "sort": "due_date"},
        {"q": "REPORT", "sort": "-title"},
        {"due_before": "2026-12-10T00:00:00+00:00", "due_after": "2026-12-02T00:00:00Z", "sort": "priority"},
        {"limit": 5, "offset": 20},
        {"limit": 5, "offset": 100},
    ]
    async with agent(server, user) as client:
        for query in queries:
            result = await ok(client, "find_tasks", query)
            params = {"limit": 20, **query}
            expected = await rest.get("/api/tasks", params=params, headers=auth(user))
            assert result.structured_content == expected.json(), query
            assert result.meta is None or "etags" not in result.meta  # a listing carries no ETags, as in REST


async def test_find_tasks_defaults_to_twenty_newest(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    created = [await create(rest, user, title=f"t{index}") for index in range(21)]
    async with agent(server, user) as client:
        result = await ok(client, "find_tasks", {})
    page = result.structured_content
    assert page is not None
    assert (page["total"], page["limit"], page["offset"]) == (21, 20, 0)
    assert [task["id"] for task in page["items"]] == [task["id"] for task in reversed(created)][:20]
    assert text(result).startswith("21 matching tasks, showing 1-20:")


async def test_find_tasks_pages_with_cursors_as_rest_does(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    for index in range(8):
        await create(rest, user, title=f"t{index}", status=("pending", "completed")[index % 2])
    query: dict[str, Any] = {"limit": 3, "status": "pending", "sort": "title"}
    async with agent(server, user) as client:
        result = await ok(client, "find_tasks", query)
        assert "More: pass cursor=" in text(result)
        seen: list[str] = []
        while True:
            page = result.structured_content
            assert page is not None
            seen += [task["title"] for task in page["items"]]
            if page["next_cursor"] is None:
                break
            result = await ok(client, "find_tasks", {**query, "cursor": page["next_cursor"]})
            expected = await rest.get("/api/tasks", params={**query, "cursor": page["next_cursor"]}, headers=auth(user))
            assert result.structured_content == expected.json()
        assert seen == ["t0", "t2", "t4", "t6"]
        first = (await ok(client, "find_tasks", query)).structured_content
        assert first is not None
        cursor = first["next_cursor"]
        assert "not one this API issued" in await fails(
            client, "find_tasks", {**query, "cursor": cursor, "sort": "-title"}
        )
        assert "not both" in await fails(client, "find_tasks", {**query, "cursor": cursor, "offset": 3})


async def test_get_task_returns_task_and_etag(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    task = await create(rest, user, title="Renew passport", priority="high")
    async with agent(server, user) as client:
        result = await ok(client, "get_task", {"id": task["id"]})
    assert result.structured_content == task
    assert etags(result) == {task["id"]: '"1"'}
    assert 'etag "1"' in text(result) and "Renew passport" in text(result)


async def test_update_tasks_applies_patch_semantics(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    first = await create(rest, user, title="one", description="notes", due_date="2026-12-01T09:00:00Z")
    second = await create(rest, user, title="two")
    updates = [
        # etag with or without quotes; null clears; absent fields stay.
        {"id": first["id"], "etag": '"1"', "description": None, "due_date": None, "status": "in_progress"},
        {"id": second["id"], "etag": "1", "title": "  two, renamed "},
    ]
    async with agent(server, user) as client:
        result = await ok(client, "update_tasks", {"updates": updates})
    one, two = items(result)
    assert (one["title"], one["description"], one["due_date"], one["status"]) == ("one", None, None, "in_progress")
    assert (two["title"], two["status"]) == ("two, renamed", "pending")
    assert etags(result) == {first["id"]: '"2"', second["id"]: '"2"'}
    for task in (one, two):
        response = await rest_get(rest, user, task["id"])
        assert response.json() == task and response.headers["etag"] == '"2"'
        assert task["updated_at"] > first["updated_at"]


async def test_complete_tasks_is_idempotent(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    tasks = [
        await create(rest, user, title=f"t{index}", status=status)
        for index, status in enumerate(("pending", "completed"))
    ]
    ids = [task["id"] for task in tasks]
    async with agent(server, user) as client:
        first = await ok(client, "complete_tasks", {"ids": ids})
        again = await ok(client, "complete_tasks", {"ids": ids})
    assert [task["status"] for task in items(first)] == ["completed", "completed"]
    # The already completed one was not written: same version, same updated_at.
    assert etags(first) == {ids[0]: '"2"', ids[1]: '"1"'}
    assert items(first)[1] == tasks[1]
    assert items(again) == items(first) and etags(again) == etags(first)


async def test_delete_tasks_deletes_every_id(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    ids = [(await create(rest, user, title=f"t{index}"))["id"] for index in range(3)]
    keep = await create(rest, user, title="keep")
    async with agent(server, user) as client:
        result = await ok(client, "delete_tasks", {"ids": ids})
    assert result.structured_content == {"deleted": ids}
    for task_id in ids:
        assert (await rest_get(rest, user, task_id)).status_code == 404
    assert (await rest_get(rest, user, keep["id"])).status_code == 200


# --- batches are all or nothing -----------------------------------------------------------------


async def test_add_tasks_with_invalid_item_creates_nothing(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    async with agent(server, user) as client:
        blank = await fails(client, "add_tasks", {"tasks": [{"title": "fine"}, {"title": " \u200b "}, {"title": "x"}]})
        assert blank.startswith("Invalid arguments; nothing was changed:")
        assert "tasks[1].title: must not be blank" in blank
        stranger = await fails(client, "add_tasks", {"tasks": [{"title": "fine"}, {"title": "x", "user_id": "other"}]})
        assert "tasks[1].user_id: Extra inputs are not permitted" in stranger
        bad_date = await fails(client, "add_tasks", {"tasks": [{"title": "ok"}, {"title": "x", "due_date": "friday"}]})
        assert "tasks[1].due_date: must be an RFC 3339 date-time" in bad_date
        too_many = await fails(client, "add_tasks", {"tasks": [{"title": f"t{i}"} for i in range(26)]})
        assert "tasks: List should have at most 25 items" in too_many
        assert "at least 1 item" in await fails(client, "add_tasks", {"tasks": []})
        assert "owner: Extra inputs are not permitted" in await fails(
            client, "add_tasks", {"tasks": [{"title": "x"}], "owner": "other"}
        )
        # 25 is allowed.
        await ok(client, "add_tasks", {"tasks": [{"title": f"t{i}"} for i in range(25)]})
    assert await rest_count(rest, user) == 25


async def test_update_tasks_with_stale_or_missing_item_changes_nothing(
    server: APIServer, rest: httpx.AsyncClient
) -> None:
    user = new_user()
    first, second = [await create(rest, user, title=name) for name in ("first", "second")]
    # Someone else (the REST API) changed `second` since the agent read it.
    patched = await rest.patch(f"/api/tasks/{second['id']}", json={"priority": "low"}, headers=auth(user))
    assert patched.headers["etag"] == '"2"'
    missing = str(uuid.uuid4())
    async with agent(server, user) as client:
        stale = await fails(
            client,
            "update_tasks",
            {"updates": [{"id": first["id"], "title": "changed"}, {"id": second["id"], "etag": '"1"', "title": "x"}]},
        )
        assert stale == (
            f"Nothing was changed: updates[1] ({second['id']}): changed or deleted since you read it "
            "(etag mismatch); read it again with get_task."
        )
        gone = await fails(
            client,
            "update_tasks",
            {"updates": [{"id": first["id"], "title": "changed"}, {"id": missing, "title": "x"}]},
        )
        assert gone == f"Nothing was changed: updates[1] ({missing}): not found."
        invalid = await fails(
            client, "update_tasks", {"updates": [{"id": first["id"], "title": "ok"}, {"id": second["id"], "title": ""}]}
        )
        assert "updates[1].title: String should have at least 1 character" in invalid
        bad_etag = await fails(client, "update_tasks", {"updates": [{"id": first["id"], "etag": "W/1"}]})
        assert "updates[0].etag: String should match pattern" in bad_etag
    for task, etag in ((first, '"1"'), (second, '"2"')):
        response = await rest_get(rest, user, task["id"])
        assert response.headers["etag"] == etag
        assert response.json()["title"] == task["title"]


async def test_complete_and_delete_with_one_bad_id_change_nothing(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    tasks = [await create(rest, user, title=f"t{index}") for index in range(3)]
    ids = [task["id"] for task in tasks]
    missing = str(uuid.uuid4())
    async with agent(server, user) as client:
        for tool in ("complete_tasks", "delete_tasks"):
            message = await fails(client, tool, {"ids": [*ids[:2], missing, ids[2]]})
            assert message == f"Nothing was changed: ids[2] ({missing}): not found.", tool
            repeated = await fails(client, tool, {"ids": [ids[0], ids[1], ids[0]]})
            assert repeated == f"Nothing was changed: ids[2] repeats the id of ids[0] ({ids[0]}).", tool
            assert "ids[1]: Input should be a valid UUID" in await fails(client, tool, {"ids": [ids[0], "nope"]})
            assert "at most 100 items" in await fails(client, tool, {"ids": [str(uuid.uuid4()) for _ in range(101)]})
    for task in tasks:
        response = await rest_get(rest, user, task["id"])
        assert response.status_code == 200 and response.headers["etag"] == '"1"'
        assert response.json()["status"] == "pending"


# --- isolation ------------------------------------------------------------------------------------


def _anonymised(message: str, *ids: str) -> str:
    for task_id in ids:
        message = message.replace(task_id, "<id>")
    return message


async def test_other_users_tasks_are_invisible(server: APIServer, rest: httpx.AsyncClient) -> None:
    alice, bob = new_user(), new_user()
    task = await create(rest, alice, title="alice's secret plan", description="only for alice")
    nobody = str(uuid.uuid4())
    async with agent(server, bob) as client:
        found = await ok(client, "find_tasks", {"q": "secret plan"})
        assert found.structured_content == {"items": [], "total": 0, "limit": 20, "offset": 0, "next_cursor": None}
        # Every tool answers for Alice's id exactly as for an id that does not exist.
        attempts: list[tuple[str, dict[str, Any]]] = [
            ("get_task", {"id": "{id}"}),
            ("update_tasks", {"updates": [{"id": "{id}", "title": "mine now"}]}),
            ("update_tasks", {"updates": [{"id": "{id}", "etag": '"1"', "status": "completed"}]}),
            ("complete_tasks", {"ids": ["{id}"]}),
            ("delete_tasks", {"ids": ["{id}"]}),
        ]
        for tool, template in attempts:
            as_alice = json.loads(json.dumps(template).replace("{id}", task["id"]))
            as_nobody = json.loads(json.dumps(template).replace("{id}", nobody))
            alices = await fails(client, tool, as_alice)
            assert _anonymised(alices, task["id"]) == _anonymised(await fails(client, tool, as_nobody), nobody), tool
            assert "alice" not in alices.lower() and "secret" not in alices
    response = await rest_get(rest, alice, task["id"])
    assert response.json() == task and response.headers["etag"] == '"1"'


async def test_tasks_added_by_agent_belong_to_token_subject(server: APIServer, rest: httpx.AsyncClient) -> None:
    alice, bob = new_user(), new_user()
    async with agent(server, bob) as client:
        added = items(await ok(client, "add_tasks", {"tasks": [{"title": "bob's"}]}))
    assert added[0]["user_id"] == bob
    assert await rest_count(rest, alice) == 0
    assert (await rest_get(rest, alice, added[0]["id"])).status_code == 403


# --- bad arguments are tool errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("find_tasks", {"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ("find_tasks", {"limit": 101}, "limit: Input should be less than or equal to 100"),
        ("find_tasks", {"sort": "newest"}, "sort: Input should be"),
        ("find_tasks", {"status": "done"}, "status: Input should be 'pending', 'in_progress' or 'completed'"),
        ("find_tasks", {"due_before": "tomorrow"}, "due_before: must be an RFC 3339 date-time with an offset"),
        ("find_tasks", {"due_after": "2026-02-30T00:00:00Z"}, "due_after: is not a valid date-time"),
        ("find_tasks", {"q": ""}, "q: String should have at least 1 character"),
        ("find_tasks", {"q": "a\u0000b"}, "q: must not contain NUL"),
        ("find_tasks", {"user_id": "someone"}, "user_id: Extra inputs are not permitted"),
        ("get_task", {"id": "42"}, "id: Input should be a valid UUID"),
        ("get_task", {}, "id: Field required"),
        ("add_tasks", {"tasks": "buy milk"}, "tasks: Input should be a valid list"),
        ("add_tasks", {"tasks": [{"title": "x", "priority": "urgent"}]}, "tasks[0].priority: Input should be"),
        ("update_tasks", {"updates": [{"title": "no id"}]}, "updates[0].id: Field required"),
        ("update_tasks", {"updates": [{"id": str(uuid.uuid4()), "title": None}]}, "updates[0].title:"),
        ("no_such_tool", {}, "Unknown tool: no_such_tool"),
    ],
)
async def test_bad_arguments_are_tool_errors(
    server: APIServer, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    async with agent(server, new_user()) as client:
        message = await fails(client, tool, arguments)
    assert expected in message, message


async def test_bad_arguments_over_http_are_200_results_not_errors(rest: httpx.AsyncClient) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
    for params in (
        {"name": "add_tasks", "arguments": {"tasks": [{"title": ""}]}},
        {"name": "find_tasks", "arguments": {"limit": "many"}},
        {"name": "delete_tasks", "arguments": {"ids": None}},
    ):
        response = await rest.post("/mcp", json={**call, "params": params}, headers={**ACCEPT, **auth(new_user())})
        assert response.status_code == 200, response.text
        body = response.json()
        assert "error" not in body and body["result"]["isError"] is True, body


# --- authentication ----------------------------------------------------------------------------------


def _assert_challenge(response: httpx.Response, base: str, *, error: bool) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert ('error="invalid_token"' in challenge) is error


async def test_requests_without_valid_token_are_401_with_resource_metadata(
    server: APIServer, rest: httpx.AsyncClient
) -> None:
    headers = {**ACCEPT}
    _assert_challenge(await rest.post("/mcp", json=TOOLS_LIST, headers=headers), server.url, error=False)
    for token in (
        "not-a-jwt",
        hs256_token(new_user(), secret="another-secret-that-is-long-enough-0123456789"),
        hs256_token(new_user(), exp_in=-5),
    ):
        response = await rest.post("/mcp", json=TOOLS_LIST, headers={**headers, **bearer(token)})
        _assert_challenge(response, server.url, error=True)
    # The Python client gives up on its first request (raised from inside its task group).
    refused = False
    try:
        async with connect(f"{server.url}/mcp", "not-a-jwt"):
            pass
    except* MCPError:
        refused = True
    assert refused


async def test_protected_resource_metadata_is_served(server: APIServer, rest: httpx.AsyncClient) -> None:
    response = await rest.get("/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    # Shared-secret tokens only: no authorization server to name.
    assert response.json() == {
        "resource": f"{server.url}/mcp",
        "bearer_methods_supported": ["header"],
        "resource_name": "Task API",
    }


@pytest.mark.parametrize(
    ("settings", "issuer"),
    [
        ({"JWT_ISSUER": "https://auth.example.test"}, "https://auth.example.test"),
        ({"JWT_JWKS_URL": "https://app.example.test:8443/api/auth/jwks"}, "https://app.example.test:8443"),
    ],
)
async def test_protected_resource_metadata_names_the_authorization_server(
    settings_factory: Callable[..., Settings], settings: dict[str, str], issuer: str
) -> None:
    app: FastAPI
    async with running_app(settings_factory(**settings)) as app, http_client(app) as client:
        response = await client.get("/.well-known/oauth-protected-resource/mcp")
    assert response.json()["authorization_servers"] == [issuer]
    assert response.json()["resource"] == "http://testserver/mcp"


@pytest.mark.one_database  # token expiry in the MCP session: no database work decides it
async def test_token_expiring_mid_session_is_refused(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    token = hs256_token(user, exp_in=2)
    async with connect(f"{server.url}/mcp", token) as client:
        await ok(client, "find_tasks", {})
        await asyncio.sleep(max(0.0, int(time.time()) + 3 - time.time()))
        with pytest.raises(MCPError):
            await client.call_tool("find_tasks", {})
    response = await rest.post("/mcp", json=TOOLS_LIST, headers={**ACCEPT, **bearer(token)})
    _assert_challenge(response, server.url, error=True)
    assert response.json()["detail"] == "The token has expired."


async def test_app_serves_mcp_again_after_its_lifespan_restarts(settings_factory: Callable[..., Settings]) -> None:
    # The SDK's session manager runs only once; each start of the app gets a new one.
    app = create_app(settings_factory())
    for _ in range(2):
        async with app.router.lifespan_context(app), http_client(app) as client:
            headers = {**ACCEPT, **auth(new_user()), "Host": "127.0.0.1"}
            response = await client.post("/mcp", json=TOOLS_LIST, headers=headers)
            assert response.status_code == 200, response.text


# --- Host protection and proxies -------------------------------------------------------------------


async def test_foreign_host_is_421_and_allowed_host_is_served(rest: httpx.AsyncClient) -> None:
    headers = {**ACCEPT, **auth(new_user())}
    refused = await rest.post("/mcp", json=TOOLS_LIST, headers={**headers, "Host": "attacker.example.test"})
    assert refused.status_code == 421 and "MCP_ALLOWED_HOSTS" in refused.json()["detail"]
    # Behind a TLS proxy (on 127.0.0.1, a trusted FORWARDED_ALLOW_IPS) that keeps the public Host.
    proxied = {"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    served = await rest.post("/mcp", json=TOOLS_LIST, headers={**headers, **proxied})
    assert served.status_code == 200, served.text
    challenged = await rest.post("/mcp", json=TOOLS_LIST, headers={**ACCEPT, **proxied})
    _assert_challenge(challenged, f"https://{PUBLIC_HOST}", error=False)
    metadata = await rest.get("/.well-known/oauth-protected-resource/mcp", headers=proxied)
    assert metadata.json()["resource"] == f"https://{PUBLIC_HOST}/mcp"
    # A browser page on another origin may not drive the endpoint.
    evil_page = await rest.post("/mcp", json=TOOLS_LIST, headers={**headers, "Origin": "http://attacker.example.test"})
    assert evil_page.status_code == 403


# --- concurrency and the REST view ------------------------------------------------------------------


async def test_thirty_concurrent_calls_by_three_users(server: APIServer) -> None:
    users = [new_user() for _ in range(3)]

    async def work(user: str, client: Client, index: int) -> CallToolResult:
        if index % 5 == 4:
            return await ok(client, "find_tasks", {"limit": 100})
        return await ok(client, "add_tasks", {"tasks": [{"title": f"{index}-a"}, {"title": f"{index}-b"}]})

    async with agent(server, users[0]) as a, agent(server, users[1]) as b, agent(server, users[2]) as c:
        clients = dict(zip(users, (a, b, c), strict=True))
        calls = [work(user, clients[user], index) for index in range(10) for user in users]
        results = await asyncio.gather(*calls)
        assert len(results) == 30
        for user, client in clients.items():
            page = (await ok(client, "find_tasks", {"limit": 100})).structured_content
            assert page is not None and page["total"] == 16  # 8 add_tasks calls x 2 tasks
            assert {task["user_id"] for task in page["items"]} == {user}
            assert len({task["title"] for task in page["items"]}) == 16


async def test_rest_and_mcp_see_the_same_state_and_etags(server: APIServer, rest: httpx.AsyncClient) -> None:
    user = new_user()
    task = await create(rest, user, title="shared")
    async with agent(server, user) as client:
        seen = await ok(client, "get_task", {"id": task["id"]})
        assert seen.structured_content == task and etags(seen)[task["id"]] == '"1"'
        # MCP writes, REST reads.
        updated = await ok(client, "update_tasks", {"updates": [{"id": task["id"], "etag": '"1"', "priority": "high"}]})
        response = await rest_get(rest, user, task["id"])
        assert response.json() == items(updated)[0]
        assert response.headers["etag"] == etags(updated)[task["id"]] == '"2"'
        assert response.json()["updated_at"] > task["updated_at"]
        # REST writes, MCP reads; the old ETag is now stale for both.
        patched = await rest.patch(
            f"/api/tasks/{task['id']}", json={"status": "completed"}, headers={**auth(user), "If-Match": '"2"'}
        )
        assert patched.status_code == 200
        again = await ok(client, "get_task", {"id": task["id"]})
        assert again.structured_content == patched.json() and etags(again)[task["id"]] == patched.headers["etag"]
        stale = await fails(client, "update_tasks", {"updates": [{"id": task["id"], "etag": '"2"', "title": "x"}]})
        assert "etag mismatch" in stale
        stale_rest = await rest.patch(
            f"/api/tasks/{task['id']}", json={"title": "x"}, headers={**auth(user), "If-Match": '"2"'}
        )
        assert stale_rest.status_code == 412


# --- a second, independent client: the TypeScript SDK ------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """Node with the pinned @modelcontextprotocol/sdk installed (npm ci under the shared lock)."""
    return node_with_packages(TS_CLIENT_DIR, "the TypeScript MCP client test")


# A second client's interop; the tools' database work it triggers runs on both databases above.
@pytest.mark.one_database
async def test_typescript_sdk_lists_tools_and_calls_them(server: APIServer, rest: httpx.AsyncClient, node: str) -> None:
    user, title = new_user(), f"from TypeScript {uuid.uuid4().hex[:8]}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "MCP_URL": f"{server.url}/mcp",
        "MCP_TOKEN": hs256_token(user),
        "TITLE": title,
    }
    process = await asyncio.to_thread(
        subprocess.run,
        [node, "client.mjs"],
        cwd=TS_CLIENT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    output = json.loads(process.stdout)
    committed = json.loads(CONTRACT_PATH.read_text(encoding="utf-8"))["tools"]
    assert output["tools"] == [tool["name"] for tool in committed]
    added, found = output["added"], output["found"]
    assert added["isError"] is False and found["isError"] is False
    task = added["structuredContent"]["items"][0]
    assert (task["title"], task["user_id"], task["due_date"]) == (title, user, "2026-12-01T17:00:00Z")
    assert added["_meta"]["etags"] == {task["id"]: '"1"'}
    assert found["structuredContent"]["items"] == [task] and found["structuredContent"]["total"] == 1
    assert (await rest_get(rest, user, task["id"])).json() == task
