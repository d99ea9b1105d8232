"""GET /api/tasks: filters, search, sorting, pagination and `total`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import assert_problem, auth, new_user

SEED = [
    # title, description, status, priority, due_date
    ("Buy milk", "2% fat", "pending", "low", "2026-12-03T09:00:00Z"),
    ("Write report", "Quarterly 100% done", "in_progress", "high", "2026-12-01T09:00:00Z"),
    ("call mom", None, "completed", "medium", None),
    ("Plan trip_2027", "Book flights", "pending", "high", "2026-12-02T09:00:00Z"),
    ("Fix bug", "REPORT from QA", "completed", "low", "2026-11-30T09:00:00Z"),
]


@pytest.fixture
async def seeded(client: httpx.AsyncClient) -> dict[str, str]:
    headers = auth(new_user())
    for title, description, status, priority, due in SEED:
        body = {"title": title, "description": description, "status": status, "priority": priority, "due_date": due}
        assert (await client.post("/api/tasks", json=body, headers=headers)).status_code == 201
    return headers


async def titles(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[str]:
    response = await client.get("/api/tasks", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()["items"]]


async def test_list_default_is_newest_first_with_envelope(client: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    response = await client.get("/api/tasks", headers=seeded)
    page = response.json()
    assert set(page) == {"items", "total", "limit", "offset", "next_cursor"}
    assert (page["total"], page["limit"], page["offset"]) == (5, 50, 0)
    assert [t["title"] for t in page["items"]] == [s[0] for s in reversed(SEED)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "completed"}, {"call mom", "Fix bug"}),
        ({"priority": "high"}, {"Write report", "Plan trip_2027"}),
        ({"status": "pending", "priority": "high"}, {"Plan trip_2027"}),
        ({"due_before": "2026-12-02T09:00:00Z"}, {"Write report", "Fix bug"}),
        ({"due_after": "2026-12-01T09:00:00Z"}, {"Buy milk", "Plan trip_2027"}),
        (
            {"due_after": "2026-12-01T00:00:00+02:00", "due_before": "2026-12-02T12:00:00+01:00"},
            {"Write report", "Plan trip_2027"},
        ),
        ({"q": "report"}, {"Write report", "Fix bug"}),
        ({"q": "REPORT"}, {"Write report", "Fix bug"}),
        ({"q": "%"}, {"Buy milk", "Write report"}),
        ({"q": "0%"}, {"Write report"}),
        ({"q": "2%"}, {"Buy milk"}),
        ({"q": "_"}, {"Plan trip_2027"}),
        ({"q": "nothing-like-this"}, set()),
    ],
)
async def test_list_filters(
    client: httpx.AsyncClient, seeded: dict[str, str], params: dict[str, str], expected: set[str]
) -> None:
    response = await client.get("/api/tasks", params=params, headers=seeded)
    page = response.json()
    assert {t["title"] for t in page["items"]} == expected
    assert page["total"] == len(expected)


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("created_at", ["Buy milk", "Write report", "call mom", "Plan trip_2027", "Fix bug"]),
        ("-created_at", ["Fix bug", "Plan trip_2027", "call mom", "Write report", "Buy milk"]),
        ("due_date", ["Fix bug", "Write report", "Plan trip_2027", "Buy milk", "call mom"]),
        ("-due_date", ["Buy milk", "Plan trip_2027", "Write report", "Fix bug", "call mom"]),
        ("priority", ["Buy milk", "Fix bug", "call mom", "Write report", "Plan trip_2027"]),
        ("-priority", ["Plan trip_2027", "Write report", "call mom", "Fix bug", "Buy milk"]),
        ("title", ["Buy milk", "Fix bug", "Plan trip_2027", "Write report", "call mom"]),
    ],
)
async def test_list_sort(client: httpx.AsyncClient, seeded: dict[str, str], sort: str, expected: list[str]) -> None:
    got = await titles(client, seeded, sort=sort)
    if sort in ("priority", "-priority"):
        # Equal priorities tie-break by id, which is random: compare the priority groups.
        ranks = {"low": 0, "medium": 1, "high": 2}
        by_title = {s[0]: ranks[s[3]] for s in SEED}
        assert [by_title[t] for t in got] == [by_title[t] for t in expected]
    else:
        assert got == expected


async def test_list_sort_updated_at_follows_writes(client: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    first = (await client.get("/api/tasks", params={"sort": "created_at", "limit": 1}, headers=seeded)).json()
    task_id = first["items"][0]["id"]
    await client.patch(f"/api/tasks/{task_id}", json={"status": "completed"}, headers=seeded)
    assert (await titles(client, seeded, sort="-updated_at"))[0] == first["items"][0]["title"]
    assert (await titles(client, seeded, sort="updated_at"))[-1] == first["items"][0]["title"]


async def test_list_pagination_is_stable_and_total_counts_all(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    for n in range(23):
        # Same priority for all: page boundaries must still be stable thanks to the id tie-break.
        await client.post("/api/tasks", json={"title": f"t{n:02}", "priority": "high"}, headers=headers)
    seen: list[str] = []
    for offset in range(0, 30, 5):
        page = (
            await client.get("/api/tasks", params={"limit": 5, "offset": offset, "sort": "priority"}, headers=headers)
        ).json()
        assert page["total"] == 23 and page["limit"] == 5 and page["offset"] == offset
        seen += [t["id"] for t in page["items"]]
    assert len(seen) == len(set(seen)) == 23


async def test_list_offset_past_the_end_still_counts(client: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    page = (await client.get("/api/tasks", params={"offset": 100, "status": "pending"}, headers=seeded)).json()
    assert page["items"] == [] and page["total"] == 2 and page["offset"] == 100


async def test_list_limit_bounds(client: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    assert len(await titles(client, seeded, limit=1)) == 1
    assert len(await titles(client, seeded, limit=100)) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"offset": "-1"},
        {"status": "done"},
        {"priority": "urgent"},
        {"sort": "id"},
        {"sort": "--title"},
        {"due_before": "yesterday"},
        {"due_after": "2026-12-01T00:00:00"},
        {"due_before": "0001-01-01T00:00:00+05:00"},
        {"due_before": "0.5"},
        {"due_after": "1764000000"},
        {"due_after": "true"},
        {"due_before": "2026-12-01"},
        {"q": "a\u0000b"},
        {"q": ""},
        {"q": "x" * 201},
        {"unknown": "1"},
    ],
)
async def test_list_invalid_query_is_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await client.get("/api/tasks", params=params, headers=auth(new_user()))
    assert assert_problem(response, 422)["errors"][0]["loc"][0] == "query"
