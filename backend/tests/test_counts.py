"""task_counts (alembic 0005): the triggers keep each owner's count per (status, priority) equal to a
real count(*) of their tasks after every kind of write, and under concurrent writers of one owner;
`total` is exact for every filter combination whether it comes from the counts or from counting."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.database import Database
from tests.support import auth, new_user

STATUSES = ("pending", "in_progress", "completed")
PRIORITIES = ("low", "medium", "high")


async def stored_counts(app: FastAPI, owner: str) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """(the trigger-kept counts, a real count(*)) of the owner's tasks per (status, priority), zeros left out."""
    database: Database = app.state.database
    async with database.engine.connect() as conn:
        kept = await conn.execute(
            text("SELECT status, priority, n FROM task_counts WHERE user_id = :owner AND n <> 0"), {"owner": owner}
        )
        real = await conn.execute(
            text("SELECT status, priority, count(*) FROM tasks WHERE user_id = :owner GROUP BY status, priority"),
            {"owner": owner},
        )
        return {(s, p): n for s, p, n in kept}, {(s, p): n for s, p, n in real}


async def assert_counts_exact(app: FastAPI, owner: str) -> dict[tuple[str, str], int]:
    kept, real = await stored_counts(app, owner)
    assert kept == real
    return real


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/api/tasks", json={"title": "t", **body}, headers=headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def test_counts_follow_creates_updates_and_deletes(client: httpx.AsyncClient, app: FastAPI) -> None:
    owner, other = new_user(), new_user()
    headers = auth(owner)
    tasks = [await create(client, headers, status=s, priority=p) for s, p in itertools.product(STATUSES, PRIORITIES)]
    tasks += [await create(client, headers) for _ in range(3)]
    await create(client, auth(other), status="completed")
    assert sum((await assert_counts_exact(app, owner)).values()) == 12

    # PATCH of status, of priority, of both, of neither (title only), and to the same value.
    for task, change in zip(
        tasks,
        [{"status": "completed"}, {"priority": "high"}, {"status": "pending", "priority": "low"}, {"title": "x"}, {}],
        strict=False,
    ):
        response = await client.patch(f"/api/tasks/{task['id']}", json=change, headers=headers)
        assert response.status_code == 200, response.text
        await assert_counts_exact(app, owner)
    response = await client.patch(f"/api/tasks/{tasks[5]['id']}", json={"status": tasks[5]["status"]}, headers=headers)
    assert response.status_code == 200
    # PUT resets the omitted fields to their defaults (status pending, priority medium).
    response = await client.put(f"/api/tasks/{tasks[8]['id']}", json={"title": "replaced"}, headers=headers)
    assert response.status_code == 200
    await assert_counts_exact(app, owner)
    # A failed conditional write changes nothing.
    response = await client.patch(
        f"/api/tasks/{tasks[6]['id']}", json={"status": "pending"}, headers={**headers, "If-Match": '"99"'}
    )
    assert response.status_code == 412
    for task in tasks[:7]:
        assert (await client.delete(f"/api/tasks/{task['id']}", headers=headers)).status_code == 204
        await assert_counts_exact(app, owner)
    assert sum((await assert_counts_exact(app, owner)).values()) == 5
    assert await assert_counts_exact(app, other) == {("completed", "medium"): 1}


async def test_counts_stay_exact_under_concurrent_writers_of_one_owner(client: httpx.AsyncClient, app: FastAPI) -> None:
    # On PostgreSQL these run at once (the owner's change_counters row lock orders them); SQLite
    # takes one writer at a time.
    owner = new_user()
    headers = auth(owner)
    seeded = await asyncio.gather(*(create(client, headers) for _ in range(30)))
    doomed, kept = seeded[:10], seeded[10:]
    rng = random.Random(12)  # noqa: S311  (a test's dice)

    async def write(i: int) -> None:
        task = kept[i % len(kept)]
        kind = i % 4
        if kind == 0:
            await create(client, headers, status=rng.choice(STATUSES), priority=rng.choice(PRIORITIES))
        elif kind == 1:
            change = {"status": rng.choice(STATUSES), "priority": rng.choice(PRIORITIES)}
            assert (await client.patch(f"/api/tasks/{task['id']}", json=change, headers=headers)).status_code == 200
        elif kind == 2:
            body = {"title": "put", "status": rng.choice(STATUSES)}
            assert (await client.put(f"/api/tasks/{task['id']}", json=body, headers=headers)).status_code == 200
        elif i < 40:
            # Deletes of distinct tasks (one each), interleaved with the other writers' updates.
            response = await client.delete(f"/api/tasks/{doomed[i // 4]['id']}", headers=headers)
            assert response.status_code == 204

    await asyncio.gather(*(write(i) for i in range(160)))
    real = await assert_counts_exact(app, owner)
    listed = (await client.get("/api/tasks", headers=headers)).json()["total"]
    assert listed == sum(real.values()) == 30 + 40 - 10


async def test_total_is_exact_for_every_filter_combination(client: httpx.AsyncClient, app: FastAPI) -> None:
    owner = new_user()
    headers = auth(owner)
    rng = random.Random(5)  # noqa: S311  (a test's dice)
    for i in range(30):
        await create(
            client,
            headers,
            title=f"task {i} {'needle' if i % 4 == 0 else ''}",
            status=rng.choice(STATUSES),
            priority=rng.choice(PRIORITIES),
            due_date=None if i % 3 == 0 else f"2026-12-{1 + i % 28:02d}T09:00:00Z",
        )
    await create(client, auth(new_user()))  # someone else's
    everything = (await client.get("/api/tasks", params={"limit": 100}, headers=headers)).json()["items"]
    assert len(everything) == 30

    def matches(task: dict[str, Any], params: dict[str, str]) -> bool:
        due = task["due_date"]
        return (
            task["status"] == params.get("status", task["status"])
            and task["priority"] == params.get("priority", task["priority"])
            and ("q" not in params or params["q"] in task["title"])
            and ("due_before" not in params or (due is not None and due < params["due_before"]))
        )

    choices: list[list[dict[str, str]]] = [
        [{}, *({"status": s} for s in STATUSES)],
        [{}, *({"priority": p} for p in PRIORITIES)],
        [{}, {"q": "needle"}, {"due_before": "2026-12-15T00:00:00Z"}],
    ]
    for combination in itertools.product(*choices):
        params = {k: v for part in combination for k, v in part.items()}
        expected = sum(matches(task, params) for task in everything)
        for limit, offset in ((2, 0), (1, max(expected - 1, 0)), (5, 1000)):  # first, last, past the last page
            page = (
                await client.get("/api/tasks", params={**params, "limit": limit, "offset": offset}, headers=headers)
            ).json()
            assert page["total"] == expected, (params, limit, offset)
