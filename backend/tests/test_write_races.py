"""Concurrent writers of one owner on the write statements (on PostgreSQL: one statement each, on an
autocommit connection, the stamp a data-modifying CTE; app/services/changes.py).

- Writers holding the same ETag: exactly one wins, the others get 412, for PATCH and DELETE.
- Many writers of every kind (POST, PUT, PATCH, DELETE, with and without If-Match) on one owner,
  with a reader polling the change feed all along: no answer is a 500 (a deadlock would be), and
  the reader's copy, built from the feed alone, equals the task list afterwards (no change skipped).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support import auth, new_user
from tests.support.apps import http_client, make_settings, running_app
from tests.support.feed import FeedCopy

WRITERS = 12
WRITES_EACH = 30
SAME_ETAG = 12


@pytest.fixture(scope="module")
async def racing_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The app with room for many concurrent requests of one owner."""
    # A generous statement limit: on SQLite writers queue for the database's one write lock, and on a
    # loaded machine that wait can pass the default limit (a 422, not what this module tests).
    settings = make_settings(
        database_url,
        DB_POOL_SIZE=WRITERS + 2,
        DB_MAX_SLOTS_PER_USER=WRITERS + 2,
        DB_STATEMENT_TIMEOUT_MS=60_000,
    )
    async with running_app(settings) as application:
        yield application


@pytest.fixture
async def client(racing_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the racing app."""
    async with http_client(racing_app) as c:
        yield c


async def test_writers_with_the_same_etag_one_wins(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = await client.post("/api/tasks", json={"title": "contended"}, headers=headers)
    task_id, etag = created.json()["id"], created.headers["ETag"]
    conditional = headers | {"If-Match": etag}

    patches = await asyncio.gather(
        *(
            client.patch(f"/api/tasks/{task_id}", json={"title": f"writer {n}"}, headers=conditional)
            for n in range(SAME_ETAG)
        )
    )
    assert sorted(response.status_code for response in patches) == [200] + [412] * (SAME_ETAG - 1)
    winner = next(response for response in patches if response.status_code == 200)
    current = await client.get(f"/api/tasks/{task_id}", headers=headers)
    assert current.json() == winner.json()
    assert current.headers["ETag"] == winner.headers["ETag"] == '"2"'

    deleting = headers | {"If-Match": winner.headers["ETag"]}
    deletes = await asyncio.gather(
        *(client.delete(f"/api/tasks/{task_id}", headers=deleting) for _ in range(SAME_ETAG))
    )
    assert sorted(response.status_code for response in deletes) == [204] + [412] * (SAME_ETAG - 1)
    feed = (await client.get("/api/tasks/changes", headers=headers)).json()
    assert feed["changes"] == []
    since_create = await client.get("/api/tasks/changes", headers=headers, params={"limit": 500})
    assert since_create.status_code == 200


async def test_many_writers_of_one_owner_never_deadlock_or_skip_a_change(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    live: dict[str, str] = {}  # id -> ETag as last seen by a writer (deletes race, so some are gone)
    statuses: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def writer(number: int) -> None:
        rng = random.Random(number)  # noqa: S311  (a test's dice)
        for _ in range(WRITES_EACH):
            roll = rng.random()
            if roll < 0.3 or len(live) < 4:
                response = await client.post("/api/tasks", json={"title": f"w{number}"}, headers=headers)
                assert response.status_code == 201, response.text
                live[response.json()["id"]] = response.headers["ETag"]
                continue
            task_id = rng.choice(list(live))
            extra = {"If-Match": live[task_id]} if rng.random() < 0.5 else {}
            if roll < 0.55:
                body = {"title": f"w{number} {rng.random():.6f}", "status": rng.choice(["pending", "completed"])}
                response = await client.patch(f"/api/tasks/{task_id}", json=body, headers=headers | extra)
                method = "PATCH"
            elif roll < 0.75:
                body = {"title": f"put {number}", "priority": rng.choice(["low", "high"])}
                response = await client.put(f"/api/tasks/{task_id}", json=body, headers=headers | extra)
                method = "PUT"
            else:
                response = await client.delete(f"/api/tasks/{task_id}", headers=headers | extra)
                method = "DELETE"
                if response.status_code == 204:
                    live.pop(task_id, None)
            statuses.append((method, response.status_code))
            if response.status_code == 200 and task_id in live:
                live[task_id] = response.headers["ETag"]

    copy = FeedCopy()

    async def poll() -> bool:
        response = await client.get("/api/tasks/changes", params=copy.params(50), headers=headers)
        assert response.status_code == 200, response.text
        return copy.apply(response.json())

    async def reader() -> None:
        while not done.is_set():
            await poll()
            await asyncio.sleep(0)

    polling = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    done.set()
    await polling
    while await poll():
        pass

    # Every write got an answer that means something: no 500 (a deadlock), no 503.
    allowed = {"PATCH": {200, 404, 412}, "PUT": {200, 404, 412}, "DELETE": {204, 404, 412}}
    assert all(status in allowed[method] for method, status in statuses), statuses
    listed: dict[str, dict[str, Any]] = {}
    while True:
        page = (await client.get("/api/tasks", params={"limit": 100, "offset": len(listed)}, headers=headers)).json()
        listed.update({task["id"]: task for task in page["items"]})
        if len(listed) >= page["total"]:
            break
    assert copy.tasks == listed
    for task_id in listed:
        assert (await client.get(f"/api/tasks/{task_id}", headers=headers)).headers["ETag"] == copy.etags[task_id]
