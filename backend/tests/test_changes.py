"""The change feed (GET /api/tasks/changes), in-process on both databases: snapshots, incremental
answers, tombstones, paging, 410 after the tombstone retention, 422 for cursors that are not the
caller's, isolation, and that applying the answers reproduces GET /api/tasks exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.database import Database
from app.schemas.task import TaskCreate
from app.services import changes as feed
from app.services import tasks as service
from tests.support import assert_problem, auth, new_user
from tests.support.apps import http_client, make_settings, running_app

# Half a second, in days: tombstones expire during a test.
RETENTION_S = 0.5
SHORT_RETENTION_DAYS = RETENTION_S / 86_400


async def create(client: httpx.AsyncClient, headers: dict[str, str], title: str = "a task") -> dict[str, Any]:
    response = await client.post("/api/tasks", json={"title": title}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def changes(
    client: httpx.AsyncClient, headers: dict[str, str], since: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if since is not None:
        params["since"] = since
    if limit is not None:
        params["limit"] = limit
    response = await client.get("/api/tasks/changes", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"changes", "cursor", "has_more"}
    return body


class Replica:
    """A client's copy of its tasks, kept only from the feed (what an offline-capable app does)."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.etags: dict[str, str] = {}
        self.cursor: str | None = None

    def apply(self, page: dict[str, Any]) -> None:
        seen: set[str] = set()
        for change in page["changes"]:
            task_id = change["task"]["id"] if change["op"] == "upsert" else change["id"]
            assert task_id not in seen, f"{task_id} twice in one answer"
            seen.add(task_id)
            if change["op"] == "upsert":
                assert set(change) == {"op", "task", "etag"}
                self.tasks[task_id] = change["task"]
                self.etags[task_id] = change["etag"]
            else:
                assert set(change) == {"op", "id", "deleted_at"}
                self.tasks.pop(task_id, None)
                self.etags.pop(task_id, None)
        self.cursor = page["cursor"]

    async def sync(self, client: httpx.AsyncClient, headers: dict[str, str], limit: int | None = None) -> int:
        """Page until `has_more` is false; the number of answers it took."""
        answers = 0
        while True:
            page = await changes(client, headers, self.cursor, limit)
            self.apply(page)
            answers += 1
            if not page["has_more"]:
                return answers


async def listed(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every task of the caller through GET /api/tasks."""
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = (await client.get("/api/tasks", params={"limit": 100, "offset": offset}, headers=headers)).json()
        found.update({task["id"]: task for task in page["items"]})
        offset += 100
        if offset >= page["total"]:
            return found


async def assert_replica_exact(replica: Replica, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert replica.tasks == await listed(client, headers)
    for task_id, etag in replica.etags.items():
        assert (await client.get(f"/api/tasks/{task_id}", headers=headers)).headers["etag"] == etag


# --- snapshot and incremental ---------------------------------------------------------------------


async def test_changes_snapshot_lists_every_task_as_upserts(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    empty = await changes(client, headers)
    assert empty["changes"] == [] and empty["has_more"] is False and empty["cursor"]
    created = [await create(client, headers, f"task {n}") for n in range(3)]
    snapshot = await changes(client, headers)
    assert [change["op"] for change in snapshot["changes"]] == ["upsert"] * 3
    assert [change["task"] for change in snapshot["changes"]] == created  # oldest change first
    assert snapshot["has_more"] is False
    replica = Replica()
    replica.apply(snapshot)
    await assert_replica_exact(replica, client, headers)


async def test_changes_since_cursor_has_only_what_changed_in_its_latest_state(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    first, second = await create(client, headers, "first"), await create(client, headers, "second")
    cursor = (await changes(client, headers))["cursor"]
    for status in ("in_progress", "completed"):
        patched = await client.patch(f"/api/tasks/{first['id']}", json={"status": status}, headers=headers)
        assert patched.status_code == 200
    third = await create(client, headers, "third")

    answer = await changes(client, headers, cursor)
    # In the order of each task's latest change.
    assert [(c["op"], c["task"]["id"]) for c in answer["changes"]] == [("upsert", first["id"]), ("upsert", third["id"])]
    latest = answer["changes"][0]
    assert latest["task"] == patched.json() and latest["etag"] == patched.headers["etag"] == '"3"'
    assert second["id"] not in str(answer)
    # Nothing new: nothing, and the same cursor.
    again = await changes(client, headers, answer["cursor"])
    assert again == {"changes": [], "cursor": answer["cursor"], "has_more": False}


async def test_changes_report_deletes_as_tombstones(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    kept, doomed = await create(client, headers, "kept"), await create(client, headers, "doomed")
    replica = Replica()
    await replica.sync(client, headers)
    assert set(replica.tasks) == {kept["id"], doomed["id"]}

    assert (await client.delete(f"/api/tasks/{doomed['id']}", headers=headers)).status_code == 204
    # Created and deleted after the cursor: a delete or nothing, never an upsert.
    brief = await create(client, headers, "brief")
    assert (await client.delete(f"/api/tasks/{brief['id']}", headers=headers)).status_code == 204

    answer = await changes(client, headers, replica.cursor)
    assert [(c["op"], c["id"]) for c in answer["changes"]] == [("delete", doomed["id"]), ("delete", brief["id"])]
    assert answer["changes"][0]["deleted_at"].endswith("Z")
    replica.apply(answer)
    await assert_replica_exact(replica, client, headers)
    # A snapshot never lists what was deleted before it.
    assert [c["op"] for c in (await changes(client, headers))["changes"]] == ["upsert"]


async def test_changes_failed_write_leaves_no_change(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    task = await create(client, headers)
    cursor = (await changes(client, headers))["cursor"]
    stale = {**headers, "If-Match": '"7"'}
    assert (await client.patch(f"/api/tasks/{task['id']}", json={"title": "x"}, headers=stale)).status_code == 412
    assert (await client.delete(f"/api/tasks/{task['id']}", headers=stale)).status_code == 412
    assert (await client.delete(f"/api/tasks/{uuid.uuid4()}", headers=headers)).status_code == 404
    assert (await changes(client, headers, cursor)) == {"changes": [], "cursor": cursor, "has_more": False}


async def test_changes_idempotent_replay_is_not_a_change(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    keyed = {**headers, "Idempotency-Key": str(uuid.uuid4())}
    assert (await client.post("/api/tasks", json={"title": "once"}, headers=keyed)).status_code == 201
    cursor = (await changes(client, headers))["cursor"]
    replayed = await client.post("/api/tasks", json={"title": "once"}, headers=keyed)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert (await changes(client, headers, cursor))["changes"] == []


# --- paging ---------------------------------------------------------------------------------------


async def test_changes_page_across_has_more(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = [await create(client, headers, f"task {n}") for n in range(7)]
    sizes = []
    replica = Replica()
    while True:
        page = await changes(client, headers, replica.cursor, limit=3)
        replica.apply(page)
        sizes.append((len(page["changes"]), page["has_more"]))
        if not page["has_more"]:
            break
    assert sizes == [(3, True), (3, True), (1, False)]
    assert set(replica.tasks) == {task["id"] for task in created}
    await assert_replica_exact(replica, client, headers)


async def test_changes_paging_a_snapshot_while_tasks_change(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    created = [await create(client, headers, f"task {n}") for n in range(6)]
    replica = Replica()
    replica.apply(await changes(client, headers, limit=2))  # tasks 0 and 1
    # Meanwhile: one already sent changes, one not yet sent is deleted, one is added.
    await client.patch(f"/api/tasks/{created[0]['id']}", json={"title": "renamed"}, headers=headers)
    await client.delete(f"/api/tasks/{created[4]['id']}", headers=headers)
    await create(client, headers, "late")
    answers = await replica.sync(client, headers, limit=2)
    assert answers >= 3
    await assert_replica_exact(replica, client, headers)
    assert replica.tasks[created[0]["id"]]["title"] == "renamed"


async def test_changes_limit_bounds(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    for limit in (0, 1001, -1):
        response = await client.get("/api/tasks/changes", params={"limit": limit}, headers=headers)
        assert assert_problem(response, 422)["errors"][0]["loc"] == ["query", "limit"]
    unknown = await client.get("/api/tasks/changes", params={"after": "x"}, headers=headers)
    assert assert_problem(unknown, 422)["errors"][0]["loc"] == ["query", "after"]
    assert (await client.get("/api/tasks/changes", params={"limit": 1000}, headers=headers)).status_code == 200


# --- bad and old cursors --------------------------------------------------------------------------


async def test_changes_garbled_or_foreign_cursor_is_422(client: httpx.AsyncClient) -> None:
    alice, bob = new_user(), new_user()
    await create(client, auth(alice))
    cursor = (await changes(client, auth(alice)))["cursor"]
    flipped = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
    for garbage in ("nonsense", cursor[:-1], flipped, cursor + "AAAA", "é" * 10, "%00"):
        response = await client.get("/api/tasks/changes", params={"since": garbage}, headers=auth(alice))
        body = assert_problem(response, 422)
        assert "cursor" in body["detail"] or body["errors"][0]["loc"] == ["query", "since"]
    # Alice's cursor means nothing for Bob.
    foreign = await client.get("/api/tasks/changes", params={"since": cursor}, headers=auth(bob))
    assert "another user's" in assert_problem(foreign, 422)["detail"]
    too_long = await client.get("/api/tasks/changes", params={"since": "A" * 65}, headers=auth(alice))
    assert assert_problem(too_long, 422)["errors"][0]["loc"] == ["query", "since"]


async def test_changes_cursor_ahead_of_the_database_is_410(client: httpx.AsyncClient) -> None:
    # What a client holds after the database was restored from an older backup.
    user = new_user()
    await create(client, auth(user))
    ahead = feed.encode_cursor(user, feed.Cursor(1_000, 1_000))
    body = assert_problem(await client.get("/api/tasks/changes", params={"since": ahead}, headers=auth(user)), 410)
    assert "resync" in body["detail"]


@pytest.fixture
async def short_retention(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with tombstones kept for half a second."""
    settings = make_settings(database_url, SYNC_TOMBSTONE_DAYS=SHORT_RETENTION_DAYS)
    async with running_app(settings) as app, http_client(app) as client:
        yield client


async def test_changes_cursor_older_than_the_retention_is_410(short_retention: httpx.AsyncClient) -> None:
    client, headers = short_retention, auth(new_user())
    task = await create(client, headers)
    old = (await changes(client, headers))["cursor"]
    assert (await client.delete(f"/api/tasks/{task['id']}", headers=headers)).status_code == 204
    # Before the retention has passed the delete is still reported.
    recent = await changes(client, headers, old)
    assert [c["op"] for c in recent["changes"]] == ["delete"]
    await asyncio.sleep(RETENTION_S + 0.1)
    # The owner's next write purges the expired tombstone; cursors from before it are gone.
    await create(client, headers, "purges")
    body = assert_problem(await client.get("/api/tasks/changes", params={"since": old}, headers=headers), 410)
    assert body["title"] == "Gone" and "resync" in body["detail"]
    # A cursor taken after the delete was reported still works, and so does a fresh snapshot.
    assert [c["op"] for c in (await changes(client, headers, recent["cursor"]))["changes"]] == ["upsert"]
    replica = Replica()
    await replica.sync(client, headers)
    await assert_replica_exact(replica, client, headers)


async def test_changes_without_deletes_old_cursors_stay_valid(short_retention: httpx.AsyncClient) -> None:
    # Nothing was purged, so nothing the cursor needs is missing: no 410 however old it is.
    client, headers = short_retention, auth(new_user())
    task = await create(client, headers)
    old = (await changes(client, headers))["cursor"]
    await asyncio.sleep(RETENTION_S + 0.1)
    await client.patch(f"/api/tasks/{task['id']}", json={"title": "later"}, headers=headers)
    assert [c["task"]["title"] for c in (await changes(client, headers, old))["changes"]] == ["later"]


# --- isolation ------------------------------------------------------------------------------------


async def test_changes_isolation_between_users(client: httpx.AsyncClient) -> None:
    alice, bob = auth(new_user()), auth(new_user())
    await create(client, bob, "bob's")
    bob_cursor = (await changes(client, bob))["cursor"]
    mine = await create(client, alice, "alice's")
    await client.patch(f"/api/tasks/{mine['id']}", json={"status": "completed"}, headers=alice)
    gone = await create(client, alice, "alice's, deleted")
    await client.delete(f"/api/tasks/{gone['id']}", headers=alice)

    for answer in (await changes(client, bob), await changes(client, bob, bob_cursor)):
        text = str(answer)
        assert mine["id"] not in text and gone["id"] not in text and "alice" not in text
    assert (await changes(client, bob, bob_cursor))["changes"] == []
    assert [c["op"] for c in (await changes(client, alice))["changes"]] == ["upsert"]


# --- the service itself (what the agent tools call) ------------------------------------------------


async def test_changes_service_sees_writes_made_through_the_services(app: FastAPI) -> None:
    db: Database = app.state.database
    owner = new_user()
    async with db.transaction(owner) as conn:
        created = (await service.create_task(conn, owner, TaskCreate(title="via a tool"))).task
    async with db.reader(owner) as conn:
        page = await feed.list_changes(conn, owner, None)
    assert len(page.changes) == 1 and not page.has_more
    upsert = page.changes[0]
    assert isinstance(upsert, feed.Upsert) and upsert.task == created.task and upsert.etag == created.etag
    async with db.transaction(owner) as conn:
        await service.delete_task(conn, owner, created.id, None)
    async with db.reader(owner) as conn:
        after = await feed.list_changes(conn, owner, page.cursor)
    assert [type(change) for change in after.changes] == [feed.Deletion]
