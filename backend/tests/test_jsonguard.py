"""Cheap rejection: a JSON object with too many members is one small 422 before validation, and a 422
lists at most 20 errors plus `errors_omitted` (app/jsonguard.py, app/errors.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.errors import MAX_LISTED_ERRORS
from app.jsonguard import MAX_OBJECT_MEMBERS, crowded_object
from tests.support import assert_problem, auth, new_user
from tests.support.servers import APIServer, Bystander, cpu_seconds

MIB = 1024 * 1024


def unknown_keys_body(size: int = MIB - 64) -> bytes:
    """A JSON object of ~95,000 unknown keys, just under the 1 MiB body limit."""
    parts, used, index = [], 2, 0
    while used + len(part := f'"k{index}":1') + 1 <= size:
        parts.append(part)
        used += len(part) + 1
        index += 1
    return ("{" + ",".join(parts) + "}").encode()


def test_crowded_object_finds_objects_anywhere() -> None:
    wide = {f"k{i}": i for i in range(MAX_OBJECT_MEMBERS + 1)}
    assert crowded_object(json.dumps(wide).encode()) == MAX_OBJECT_MEMBERS + 1
    assert crowded_object(json.dumps({"a": [1, {"b": wide}]}).encode()) == MAX_OBJECT_MEMBERS + 1
    assert crowded_object(json.dumps({f"k{i}": i for i in range(MAX_OBJECT_MEMBERS)}).encode()) is None
    # Colons inside strings are not members; broken JSON is left to FastAPI.
    assert crowded_object(json.dumps({"title": ":" * 1000}).encode()) is None
    assert crowded_object(b'{"a":1,' + b'"b":2,' * 100) is None


async def test_unknown_keys_body_is_one_small_422(client: httpx.AsyncClient) -> None:
    body = unknown_keys_body()
    response = await client.post(
        "/api/tasks", content=body, headers={**auth(new_user()), "Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422)
    assert len(response.content) < 512
    assert problem["errors"] == [
        {
            "loc": ["body"],
            "msg": f"has an object with {body.count(b':')} members; at most {MAX_OBJECT_MEMBERS} are allowed",
            "type": "too_many_members",
        }
    ]
    assert "errors_omitted" not in problem
    assert response.headers["cache-control"] == "no-store"


async def test_many_errors_list_20_and_count_the_rest(client: httpx.AsyncClient) -> None:
    body = {"title": "fine", **{f"extra{i}": i for i in range(MAX_OBJECT_MEMBERS - 1)}}
    response = await client.post("/api/tasks", json=body, headers=auth(new_user()))
    problem = assert_problem(response, 422)
    assert len(problem["errors"]) == MAX_LISTED_ERRORS
    assert problem["errors_omitted"] == MAX_OBJECT_MEMBERS - 1 - MAX_LISTED_ERRORS
    assert all(error["type"] == "extra_forbidden" for error in problem["errors"])


async def test_few_errors_have_no_omitted_count(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/tasks", json={"title": ""}, headers=auth(new_user()))
    assert "errors_omitted" not in assert_problem(response, 422)


async def test_body_with_many_colons_in_strings_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/tasks/00000000-0000-4000-8000-000000000000", json={}, headers=auth(new_user()))
    assert_problem(response, 404)  # an empty object passes the guard
    created = await client.post(
        "/api/tasks", json={"title": "a:b:c", "description": "k: v, " * 500}, headers=auth(new_user())
    )
    assert created.status_code == 201, created.text


async def test_chunked_body_over_the_limit_is_413_through_the_guard(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * (512 * 1024)

    response = await client.post(
        "/api/tasks", content=chunks(), headers={**auth(new_user()), "Content-Type": "application/json"}
    )
    assert_problem(response, 413)
    assert response.headers["connection"] == "close"


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[APIServer]:
    """One API server (one worker process) on the session's database."""
    with APIServer(database_url, tmp_path_factory.mktemp("jsonguard") / "api.log") as api:
        yield api


@pytest.mark.slow
@pytest.mark.one_database  # the guard rejects before validation and any database work
async def test_parallel_unknown_keys_bodies_leave_others_served(server: APIServer) -> None:
    assert server.process is not None
    body = unknown_keys_body()
    hostile, rounds = 8, 8  # about 2 s of attack, so the bystander makes several calls meanwhile
    headers = {**auth(new_user()), "Content-Type": "application/json"}

    async def attack(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.post("/api/tasks", content=body, headers=headers) for _ in range(rounds)]

    cpu_before = cpu_seconds(server.process.pid)
    async with Bystander(server.url), httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        started = time.perf_counter()
        answers = [r for batch in await asyncio.gather(*(attack(client) for _ in range(hostile))) for r in batch]
        elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server.process.pid) - cpu_before
    print(
        f"{len(answers)} bodies of {len(body):,} bytes ({body.count(b':'):,} keys) from {hostile} clients in "
        f"{elapsed:.2f} s; server CPU {cpu:.2f} s in all, bystander included: "
        f"{cpu / len(answers) * 1000:.1f} ms per rejected body at most"
    )
    for response in answers:
        problem = assert_problem(response, 422)
        assert len(response.content) < 512
        assert [error["type"] for error in problem["errors"]] == ["too_many_members"]
        assert "errors_omitted" not in problem
    assert server.running
