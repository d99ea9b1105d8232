"""Task CRUD through HTTP: success and error paths, isolation, validation, ETag/If-Match."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support import assert_problem, auth, new_user

TASK_FIELDS = {"id", "title", "description", "status", "priority", "due_date", "user_id", "created_at", "updated_at"}


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    response = await client.post("/api/tasks", json={"title": "a task", **body}, headers=headers)
    assert response.status_code == 201, response.text
    return response


def assert_rfc3339_utc(value: str) -> None:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)


# --- create -------------------------------------------------------------------------------------


async def test_create_task_returns_201_with_location_etag_and_exact_fields(client: httpx.AsyncClient) -> None:
    user = new_user()
    response = await client.post(
        "/api/tasks",
        json={
            "title": "  Ship it  ",
            "description": "soon",
            "priority": "high",
            "due_date": "2026-12-01T10:00:00+02:00",
        },
        headers=auth(user),
    )
    assert response.status_code == 201
    task = response.json()
    assert set(task) == TASK_FIELDS
    assert task["title"] == "Ship it"
    assert task["status"] == "pending" and task["priority"] == "high"
    assert task["user_id"] == user
    assert task["due_date"] == "2026-12-01T08:00:00Z"
    for field in ("due_date", "created_at", "updated_at"):
        assert_rfc3339_utc(task[field])
    assert task["created_at"] == task["updated_at"]
    assert uuid.UUID(task["id"]).version == 4
    assert response.headers["location"] == f"/api/tasks/{task['id']}"
    assert response.headers["etag"].startswith('"')


async def test_create_task_defaults(client: httpx.AsyncClient) -> None:
    task = (await create(client, auth(new_user()))).json()
    assert (task["status"], task["priority"], task["description"], task["due_date"]) == (
        "pending",
        "medium",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "title"]),
        ({"title": ""}, ["body", "title"]),
        ({"title": "   "}, ["body", "title"]),
        ({"title": "x" * 256}, ["body", "title"]),
        ({"title": None}, ["body", "title"]),
        ({"title": 5}, ["body", "title"]),
        ({"title": "ok", "description": "d" * 10_001}, ["body", "description"]),
        ({"title": "ok", "status": "done"}, ["body", "status"]),
        ({"title": "ok", "priority": "urgent"}, ["body", "priority"]),
        ({"title": "ok", "due_date": "tomorrow"}, ["body", "due_date"]),
        ({"title": "ok", "due_date": "2026-12-01T10:00:00"}, ["body", "due_date"]),
        ({"title": "ok", "user_id": "someone-else"}, ["body", "user_id"]),
        ({"title": "ok", "id": str(uuid.uuid4())}, ["body", "id"]),
        ({"title": "ok", "created_at": "2026-01-01T00:00:00Z"}, ["body", "created_at"]),
        ({"title": "nul\u0000byte"}, ["body", "title"]),
        ({"title": "ok", "due_date": "0001-01-01T00:00:00+01:00"}, ["body", "due_date"]),
        ({"title": "ok", "due_date": "9999-12-31T23:59:59-01:00"}, ["body", "due_date"]),
        # RFC 3339 strings only: no Unix times, booleans, date-only or offset-less values.
        ({"title": "ok", "due_date": 0}, ["body", "due_date"]),
        ({"title": "ok", "due_date": 1764000000.5}, ["body", "due_date"]),
        ({"title": "ok", "due_date": True}, ["body", "due_date"]),
        ({"title": "ok", "due_date": "2026-12-01"}, ["body", "due_date"]),
        ({"title": "ok", "due_date": "1764000000"}, ["body", "due_date"]),
        ({"title": "ok", "due_date": "2026-02-30T10:00:00Z"}, ["body", "due_date"]),
        ({"title": "ok", "due_date": "2016-12-31T23:59:60Z"}, ["body", "due_date"]),
        # Blank: only whitespace or invisible format characters.
        ({"title": "\u200b"}, ["body", "title"]),
        ({"title": " \u2060\ufeff\t"}, ["body", "title"]),
        ({"title": "\u00a0\u3000\u180e"}, ["body", "title"]),
        # The length limit is on what is sent, as the contract says.
        ({"title": "x" * 255 + " "}, ["body", "title"]),
    ],
)
async def test_create_task_invalid_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], loc: list[str]
) -> None:
    problem = assert_problem(await client.post("/api/tasks", json=body, headers=auth(new_user())), 422)
    assert loc in [error["loc"] for error in problem["errors"]]
    assert all({"loc", "msg", "type"} == set(error) for error in problem["errors"])


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2026-12-01T10:00:00+02:00", "2026-12-01T08:00:00Z"),
        ("2026-12-01t10:00:00.5z", "2026-12-01T10:00:00.500000Z"),
        ("2026-12-01T10:00:00.123456789-00:30", "2026-12-01T10:30:00.123456Z"),
        ("0001-01-02T00:00:00+23:59", "0001-01-01T00:01:00Z"),
    ],
)
async def test_create_task_rfc3339_due_date_is_stored_in_utc(client: httpx.AsyncClient, sent: str, stored: str) -> None:
    task = (await create(client, auth(new_user()), due_date=sent)).json()
    assert task["due_date"] == stored


async def test_create_task_title_is_trimmed_around_visible_text(client: httpx.AsyncClient) -> None:
    task = (await create(client, auth(new_user()), title="\u3000 \u200bcall Sam\t ")).json()
    assert task["title"] == "\u200bcall Sam"


async def test_method_not_allowed_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    task_path = f"/api/tasks/{uuid.uuid4()}"
    for method, path, allowed in [
        ("PUT", "/api/tasks", "GET, POST"),
        ("OPTIONS", "/api/tasks", "GET, POST"),
        ("POST", task_path, "GET, PUT, PATCH, DELETE"),
        ("OPTIONS", task_path, "GET, PUT, PATCH, DELETE"),
        ("DELETE", "/health", "GET"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert_problem(response, 405)
        assert response.headers["allow"] == allowed, (method, path)


async def test_create_task_accepts_limits_and_unicode(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    title = "é🙂<script>alert(1)</script>'; DROP TABLE tasks;--"[:255]
    description = "🙂" * 10_000
    task = (await create(client, headers, title=title, description=description)).json()
    fetched = (await client.get(f"/api/tasks/{task['id']}", headers=headers)).json()
    assert (fetched["title"], fetched["description"]) == (title, description)
    long_title = (await create(client, headers, title="t" * 255)).json()
    assert len(long_title["title"]) == 255


async def test_create_task_lone_surrogate_is_422(client: httpx.AsyncClient) -> None:
    content = b'{"title": "bad \\ud800 surrogate"}'
    response = await client.post(
        "/api/tasks", content=content, headers={**auth(new_user()), "Content-Type": "application/json"}
    )
    assert_problem(response, 422)


async def test_create_task_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/tasks", content=b'{"title": ', headers={**auth(new_user()), "Content-Type": "application/json"}
    )
    assert_problem(response, 422)


async def test_create_task_body_over_1mib_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"title": "x", "description": "' + b"a" * (1024 * 1024) + b'"}'
    response = await client.post(
        "/api/tasks", content=body, headers={**auth(new_user()), "Content-Type": "application/json"}
    )
    assert_problem(response, 413)


# --- read ---------------------------------------------------------------------------------------


async def test_get_task_returns_it_with_etag(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = await create(client, headers)
    response = await client.get(created.headers["location"], headers=headers)
    assert response.status_code == 200
    assert response.json() == created.json()
    assert response.headers["etag"] == created.headers["etag"]


async def test_get_task_unknown_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/api/tasks/{uuid.uuid4()}", headers=auth(new_user())), 404)


async def test_get_task_not_a_uuid_is_422(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.get("/api/tasks/not-a-uuid", headers=auth(new_user())), 422)
    assert problem["errors"][0]["loc"] == ["path", "task_id"]


# --- isolation ----------------------------------------------------------------------------------


async def test_isolation_other_user_cannot_touch_a_task(client: httpx.AsyncClient) -> None:
    alice, bob = auth(new_user()), auth(new_user())
    task = (await create(client, alice, title="alice's secret")).json()
    url = f"/api/tasks/{task['id']}"
    assert_problem(await client.get(url, headers=bob), 403)
    assert_problem(await client.put(url, json={"title": "mine now"}, headers=bob), 403)
    assert_problem(await client.patch(url, json={"title": "mine now"}, headers=bob), 403)
    assert_problem(await client.patch(url, json={}, headers=bob), 403)
    assert_problem(await client.delete(url, headers=bob), 403)
    assert_problem(await client.delete(url, headers={**bob, "If-Match": "*"}), 403)
    # Nothing changed for alice.
    still = await client.get(url, headers=alice)
    assert still.json() == task


async def test_isolation_list_and_filters_never_show_other_users_tasks(client: httpx.AsyncClient) -> None:
    alice, bob = auth(new_user()), auth(new_user())
    await create(
        client, alice, title="alice findme", status="completed", priority="high", due_date="2026-12-01T00:00:00Z"
    )
    for params in (
        {},
        {"q": "findme"},
        {"status": "completed"},
        {"priority": "high"},
        {"due_after": "2026-01-01T00:00:00Z"},
        {"sort": "title"},
    ):
        page = (await client.get("/api/tasks", params=params, headers=bob)).json()
        assert page["items"] == [] and page["total"] == 0, params


async def test_isolation_user_id_in_body_is_rejected_not_used(client: httpx.AsyncClient) -> None:
    alice, bob_id = new_user(), new_user()
    response = await client.post("/api/tasks", json={"title": "x", "user_id": bob_id}, headers=auth(alice))
    assert_problem(response, 422)
    assert (await client.get("/api/tasks", headers=auth(bob_id))).json()["total"] == 0


# --- replace (PUT) ------------------------------------------------------------------------------


async def test_replace_task_resets_omitted_fields(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = await create(
        client, headers, description="d", status="in_progress", priority="high", due_date="2026-12-01T00:00:00Z"
    )
    task = created.json()
    response = await client.put(f"/api/tasks/{task['id']}", json={"title": "new"}, headers=headers)
    assert response.status_code == 200
    replaced = response.json()
    assert (
        replaced["title"],
        replaced["description"],
        replaced["status"],
        replaced["priority"],
        replaced["due_date"],
    ) == ("new", None, "pending", "medium", None)
    assert replaced["created_at"] == task["created_at"]
    assert replaced["updated_at"] > task["updated_at"]
    assert response.headers["etag"] != created.headers["etag"]


async def test_replace_task_validates_like_create(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    task = (await create(client, headers)).json()
    assert_problem(await client.put(f"/api/tasks/{task['id']}", json={"description": "no title"}, headers=headers), 422)
    assert_problem(
        await client.put(f"/api/tasks/{task['id']}", json={"title": "x", "id": task["id"]}, headers=headers), 422
    )
    assert_problem(await client.put(f"/api/tasks/{uuid.uuid4()}", json={"title": "x"}, headers=headers), 404)


# --- update (PATCH) -----------------------------------------------------------------------------


async def test_patch_task_changes_only_given_fields(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    task = (await create(client, headers, description="keep", priority="low")).json()
    response = await client.patch(f"/api/tasks/{task['id']}", json={"status": "completed"}, headers=headers)
    assert response.status_code == 200
    patched = response.json()
    assert patched["status"] == "completed"
    assert (patched["description"], patched["priority"], patched["title"]) == ("keep", "low", task["title"])


async def test_patch_task_null_clears_description_and_due_date(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    task = (await create(client, headers, description="d", due_date="2026-12-01T00:00:00Z")).json()
    patched = (
        await client.patch(f"/api/tasks/{task['id']}", json={"description": None, "due_date": None}, headers=headers)
    ).json()
    assert (patched["description"], patched["due_date"]) == (None, None)


@pytest.mark.parametrize("field", ["title", "status", "priority"])
async def test_patch_task_null_required_field_is_422(client: httpx.AsyncClient, field: str) -> None:
    headers = auth(new_user())
    task = (await create(client, headers)).json()
    problem = assert_problem(await client.patch(f"/api/tasks/{task['id']}", json={field: None}, headers=headers), 422)
    assert ["body", field] in [e["loc"] for e in problem["errors"]]


@pytest.mark.parametrize("body", [{"user_id": "x"}, {"title": ""}, {"status": "nope"}, {"updated_at": "x"}])
async def test_patch_task_invalid_is_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    headers = auth(new_user())
    task = (await create(client, headers)).json()
    assert_problem(await client.patch(f"/api/tasks/{task['id']}", json=body, headers=headers), 422)
    assert (await client.get(f"/api/tasks/{task['id']}", headers=headers)).json() == task


async def test_patch_task_empty_body_changes_nothing(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = await create(client, headers)
    response = await client.patch(created.headers["location"], json={}, headers=headers)
    assert response.status_code == 200
    assert response.json() == created.json()
    assert response.headers["etag"] == created.headers["etag"]


async def test_patch_task_unknown_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.patch(f"/api/tasks/{uuid.uuid4()}", json={"title": "x"}, headers=auth(new_user())), 404)


# --- delete -------------------------------------------------------------------------------------


async def test_delete_task_is_204_then_404(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    url = (await create(client, headers)).headers["location"]
    response = await client.delete(url, headers=headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(url, headers=headers), 404)
    assert_problem(await client.delete(url, headers=headers), 404)


# --- ETag / If-Match ----------------------------------------------------------------------------


async def test_if_match_current_etag_succeeds_and_changes_etag(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = await create(client, headers)
    etag = created.headers["etag"]
    response = await client.patch(
        created.headers["location"], json={"title": "v2"}, headers={**headers, "If-Match": etag}
    )
    assert response.status_code == 200
    assert response.headers["etag"] != etag
    listed = await client.put(
        created.headers["location"],
        json={"title": "v3"},
        headers={**headers, "If-Match": f'"nope", {response.headers["etag"]}'},
    )
    assert listed.status_code == 200


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_if_match_stale_etag_is_412_and_changes_nothing(client: httpx.AsyncClient, method: str) -> None:
    headers = auth(new_user())
    created = await create(client, headers)
    url = created.headers["location"]
    stale = created.headers["etag"]
    current = await client.patch(url, json={"title": "v2"}, headers=headers)
    for if_match in (stale, f"W/{current.headers['etag']}", '"garbage"'):
        response = await client.request(
            method, url, json={"title": "v3"} if method != "DELETE" else None, headers={**headers, "If-Match": if_match}
        )
        assert_problem(response, 412)
    after = await client.get(url, headers=headers)
    assert after.json() == current.json()
    assert after.headers["etag"] == current.headers["etag"]


async def test_if_match_star_matches_any_existing_task(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    url = (await create(client, headers)).headers["location"]
    assert (await client.patch(url, json={"title": "x"}, headers={**headers, "If-Match": "*"})).status_code == 200
    assert (await client.delete(url, headers={**headers, "If-Match": "*"})).status_code == 204


async def test_if_match_empty_patch_with_stale_etag_is_412(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = await create(client, headers)
    await client.patch(created.headers["location"], json={"title": "v2"}, headers=headers)
    response = await client.patch(
        created.headers["location"], json={}, headers={**headers, "If-Match": created.headers["etag"]}
    )
    assert_problem(response, 412)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_if_match_concurrent_writers_exactly_one_wins(client: httpx.AsyncClient, method: str) -> None:
    headers = auth(new_user())
    created = await create(client, headers)
    url, etag = created.headers["location"], created.headers["etag"]

    async def attempt(n: int) -> int:
        body = {"title": f"writer {n}"} if method == "PATCH" else None
        response = await client.request(method, url, json=body, headers={**headers, "If-Match": etag})
        return response.status_code

    statuses = await asyncio.gather(*(attempt(n) for n in range(8)))
    winner = 200 if method == "PATCH" else 204
    assert sorted(statuses) == [winner] + [412] * 7, statuses
    if method == "PATCH":
        final = await client.get(url, headers=headers)
        assert final.headers["etag"] != etag
        assert final.json()["title"].startswith("writer ")


@pytest.mark.parametrize("if_match", ['"\u00b2"', '"2147483648"', '"99999999999999999"', "x1x", '"01"', "1", '"-1"'])
async def test_if_match_malformed_or_out_of_range_is_412_not_an_error(client: httpx.AsyncClient, if_match: str) -> None:
    headers = auth(new_user())
    url = (await create(client, headers)).headers["location"]
    for method in ("PATCH", "PUT", "DELETE"):
        response = await client.request(
            method,
            url,
            json=None if method == "DELETE" else {"title": "x"},
            headers=[
                *((k.encode(), v.encode()) for k, v in headers.items()),
                (b"If-Match", if_match.encode("latin-1")),
            ],
        )
        assert_problem(response, 412)
    assert (await client.get(url, headers=headers)).json()["title"] == "a task"


async def test_create_task_chunked_body_over_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": "x", "description": "'
        for _ in range(17):
            yield b"a" * 65536
        yield b'"}'

    # No Content-Length: the limit is enforced while the body streams in.
    response = await client.post(
        "/api/tasks", content=chunks(), headers={**auth(new_user()), "Content-Type": "application/json"}
    )
    assert_problem(response, 413)
