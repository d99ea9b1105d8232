"""GET /api/tasks?cursor=...: keyset pages give exactly what offset pages give, in every sort (ties,
tasks without a due date), and a cursor works only for the owner, sort and filters it was issued for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.database import Database
from app.schemas.task import TaskSort
from tests.support import assert_problem, auth, new_user

# title, status, priority, due_date: repeated titles, priorities and due dates; some without a due date.
SEED = [
    (f"task {i % 4}", ("pending", "completed")[i % 2], ("low", "medium", "high")[i % 3], due)
    for i, due in enumerate(
        [
            "2026-12-01T09:00:00Z",
            None,
            "2026-12-01T09:00:00Z",
            "2026-12-03T09:00:00Z",
            None,
            None,
            "2026-11-30T09:00:00Z",
        ]
        * 3
    )
]


@pytest.fixture
async def owner(client: httpx.AsyncClient, app: FastAPI) -> dict[str, str]:
    user = new_user()
    headers = auth(user)
    for title, status, priority, due in SEED:
        body = {"title": title, "status": status, "priority": priority, "due_date": due}
        assert (await client.post("/api/tasks", json=body, headers=headers)).status_code == 201
    # Ties in created_at and updated_at too (the API never writes two alike): the id breaks them.
    database: Database = app.state.database
    async with database.engine.begin() as conn:
        tie = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        ids = (await conn.execute(text("SELECT id FROM tasks WHERE user_id = :u"), {"u": user})).scalars().all()
        for task_id in ids[::3]:
            await conn.execute(
                text("UPDATE tasks SET created_at = :t, updated_at = :t WHERE id = :id"),
                {"t": tie if conn.dialect.name == "postgresql" else tie.replace(tzinfo=None), "id": task_id},
            )
    return headers


async def get_page(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await client.get("/api/tasks", params=params, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


@pytest.mark.parametrize("sort", list(TaskSort))
@pytest.mark.parametrize("filters", [{}, {"status": "pending"}, {"q": "task"}])
async def test_cursor_pages_are_the_offset_order(
    client: httpx.AsyncClient, owner: dict[str, str], sort: TaskSort, filters: dict[str, str]
) -> None:
    everything = await get_page(client, owner, sort=sort.value, limit=100, **filters)
    assert everything["next_cursor"] is None
    expected = [task["id"] for task in everything["items"]]
    for limit in (1, 4):
        seen: list[str] = []
        page = await get_page(client, owner, sort=sort.value, limit=limit, **filters)
        while True:
            assert (page["total"], page["offset"], page["limit"]) == (everything["total"], 0, limit)
            seen += [task["id"] for task in page["items"]]
            if page["next_cursor"] is None:
                break
            assert len(page["items"]) == limit
            page = await get_page(client, owner, sort=sort.value, limit=limit, cursor=page["next_cursor"], **filters)
        assert seen == expected


async def test_offset_pages_offer_a_cursor_too(client: httpx.AsyncClient, owner: dict[str, str]) -> None:
    everything = [task["id"] for task in (await get_page(client, owner, limit=100))["items"]]
    page = await get_page(client, owner, limit=5, offset=5)
    after = await get_page(client, owner, limit=5, cursor=page["next_cursor"])
    assert [task["id"] for task in after["items"]] == everything[10:15]
    last = await get_page(client, owner, limit=5, offset=len(everything) - 5)
    assert last["next_cursor"] is None
    assert (await get_page(client, owner, limit=5, offset=len(everything)))["next_cursor"] is None


async def test_a_cursor_after_the_last_task_gives_an_empty_last_page(
    client: httpx.AsyncClient, owner: dict[str, str]
) -> None:
    page = await get_page(client, owner, limit=len(SEED) - 1)
    last_id = (await get_page(client, owner, limit=1, offset=len(SEED) - 1))["items"][0]["id"]
    assert (await client.delete(f"/api/tasks/{last_id}", headers=owner)).status_code == 204
    after = await get_page(client, owner, limit=5, cursor=page["next_cursor"])
    assert (after["items"], after["total"], after["next_cursor"]) == ([], len(SEED) - 1, None)


async def test_invalid_cursors_are_422(client: httpx.AsyncClient, owner: dict[str, str]) -> None:
    cursor = (await get_page(client, owner, limit=2, status="pending"))["next_cursor"]
    assert cursor
    # (Not the last character: some of its bits may be base64 padding, which decoding ignores.)
    flipped = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    feed_cursor = (await client.get("/api/tasks/changes", headers=owner)).json()["cursor"]
    for params, headers in [
        ({"cursor": cursor, "status": "pending"}, auth(new_user())),  # another user's
        ({"cursor": cursor}, owner),  # another filter
        ({"cursor": cursor, "status": "completed"}, owner),
        ({"cursor": cursor, "status": "pending", "sort": "title"}, owner),  # another sort
        ({"cursor": cursor, "status": "pending", "q": "task"}, owner),
        ({"cursor": flipped, "status": "pending"}, owner),
        ({"cursor": cursor[:10], "status": "pending"}, owner),  # truncated
        ({"cursor": "A", "status": "pending"}, owner),
        ({"cursor": feed_cursor}, owner),  # the change feed's
    ]:
        problem = assert_problem(await client.get("/api/tasks", params=params, headers=headers), 422)
        assert "cursor" in problem["detail"], params
    # Not even a cursor's alphabet or length, or with an offset: the query itself is invalid.
    for params in [
        {"cursor": "not a cursor!"},
        {"cursor": "A" * 2049},
        {"cursor": cursor, "offset": "5"},
        {"cursor": ""},
    ]:
        assert_problem(await client.get("/api/tasks", params=params, headers=owner), 422)
    # ... and the list's cursors are no change feed cursors.
    assert_problem(await client.get("/api/tasks/changes", params={"since": cursor}, headers=owner), 422)
    # Offset 0 with a cursor is the same as no offset.
    assert (
        await client.get("/api/tasks", params={"cursor": cursor, "status": "pending", "offset": "0"}, headers=owner)
    ).status_code == 200
