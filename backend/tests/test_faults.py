"""PostgreSQL crashing under a running API server: 503 problem+json with Retry-After while it is down,
recovery without restarting the API once it is back, and no acknowledged write lost.

The module owns a throwaway PostgreSQL cluster (tests/support/pgcluster.py: initdb into a temporary
directory, its own port) and a real uvicorn server on it; the shared server is never touched. The crash
is `pg_ctl stop -m immediate`: every PostgreSQL process exits at once without a checkpoint, and the
next start replays the WAL. Each test crashes the cluster and brings it back, and starts from a running
cluster and a healthy API (the `client` fixture sees to it), with users of its own: one cluster and one
API process for the three tests (an initdb and a server start each cost seconds) lose nothing, and the
API surviving several crashes without a restart is what production needs anyway.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support import assert_problem, auth, new_user
from tests.support.pgcluster import PostgresCluster, migrated_cluster
from tests.support.servers import APIServer

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

HTTP_TIMEOUT = 10.0  # a request that hangs longer than this fails the test
RECOVERY_TIMEOUT = 15.0  # the API must answer again this soon after PostgreSQL is back
WAIT_TIMEOUT = 30.0  # any other wait for the writers


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[PostgresCluster]:
    """A private, running PostgreSQL cluster with a migrated `taskapi` database, for the module."""
    async with migrated_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
async def server(cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[APIServer]:
    """The API (uvicorn, one process) serving from the private cluster, for the module."""
    log = tmp_path_factory.mktemp("faults") / "api.log"
    api = APIServer(cluster.url("taskapi"), log, settings={"DB_CONNECT_TIMEOUT": "2"})
    await asyncio.to_thread(api.start)
    try:
        yield api
    finally:
        await asyncio.to_thread(api.stop)


@pytest.fixture
async def client(cluster: PostgresCluster, server: APIServer) -> AsyncIterator[httpx.AsyncClient]:
    """A real HTTP client of the server; every request is bounded. The test starts from a running
    cluster and a healthy API, whatever an earlier test left behind."""
    if not (cluster.data_dir / "postmaster.pid").exists():
        await asyncio.to_thread(cluster.start)  # an earlier test failed while it was down
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as http:
        await wait_until_healthy(http)
        yield http


def assert_unavailable(response: httpx.Response, cluster: PostgresCluster) -> None:
    assert_problem(response, 503)
    assert response.headers["retry-after"].isdigit()
    assert str(cluster.port) not in response.text


async def wait_until_healthy(client: httpx.AsyncClient) -> None:
    """Poll /health until 200; each answer meanwhile must be a clean 503."""
    last: httpx.Response | None = None
    try:
        async with asyncio.timeout(RECOVERY_TIMEOUT):
            while True:
                last = await client.get("/health")
                if last.status_code == 200:
                    return
                assert last.status_code == 503, last.text
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"the API did not recover within {RECOVERY_TIMEOUT} s: {last.text if last else 'no answer'}")


def assert_no_server_errors(server: APIServer) -> None:
    log = server.log()
    assert not re.search(r'"status": ?500|unhandled error|database error', log), server.log_tail()


async def all_tasks(client: httpx.AsyncClient, user: str) -> dict[str, dict[str, Any]]:
    """Every task of `user`, by id, paging through the list."""
    found: dict[str, dict[str, Any]] = {}
    for offset in itertools.count(0, 100):
        page = await client.get("/api/tasks", params={"limit": "100", "offset": str(offset)}, headers=auth(user))
        assert page.status_code == 200, page.text
        found.update({task["id"]: task for task in page.json()["items"]})
        if offset + 100 >= page.json()["total"]:
            return found
    raise AssertionError("unreachable")


async def test_crash_while_serving_gives_503_then_recovers_without_restart(
    cluster: PostgresCluster, server: APIServer, client: httpx.AsyncClient
) -> None:
    user = new_user()
    created = await client.post("/api/tasks", json={"title": "before the crash"}, headers=auth(user))
    assert created.status_code == 201, created.text
    url = f"/api/tasks/{created.json()['id']}"
    assert server.process is not None
    pid = server.process.pid

    await asyncio.to_thread(cluster.crash)
    for method, path, body in (
        ("GET", "/health", None),
        ("GET", "/api/tasks", None),
        ("POST", "/api/tasks", {"title": "during the crash"}),
        ("GET", url, None),
        ("PATCH", url, {"status": "completed"}),
        ("PUT", url, {"title": "replaced"}),
        ("DELETE", url, None),
    ):
        headers = auth(user) if path != "/health" else {}
        assert_unavailable(await client.request(method, path, json=body, headers=headers), cluster)

    await asyncio.to_thread(cluster.start)
    await wait_until_healthy(client)
    listed = await client.get("/api/tasks", headers=auth(user))
    assert listed.status_code == 200, listed.text
    assert [t["title"] for t in listed.json()["items"]] == ["before the crash"]
    assert (await client.post("/api/tasks", json={"title": "after"}, headers=auth(user))).status_code == 201
    assert server.running and server.process is not None and server.process.pid == pid  # never restarted
    assert_no_server_errors(server)


async def test_crash_loses_no_acknowledged_write(
    cluster: PostgresCluster, server: APIServer, client: httpx.AsyncClient
) -> None:
    user = new_user()
    acknowledged: dict[str, tuple[str, str]] = {}  # id -> (title, etag) as last acknowledged
    for index in range(40):
        created = await client.post("/api/tasks", json={"title": f"durable {index}"}, headers=auth(user))
        assert created.status_code == 201, created.text
        acknowledged[created.json()["id"]] = (f"durable {index}", created.headers["etag"])
    for task_id in list(acknowledged)[::4]:
        title = f"{acknowledged[task_id][0]} (edited)"
        patched = await client.patch(f"/api/tasks/{task_id}", json={"title": title}, headers=auth(user))
        assert patched.status_code == 200, patched.text
        acknowledged[task_id] = (title, patched.headers["etag"])

    await asyncio.to_thread(cluster.crash)  # right after the last 2xx: no checkpoint, no clean shutdown
    await asyncio.to_thread(cluster.start)
    await wait_until_healthy(client)

    stored = await all_tasks(client, user)
    assert set(stored) == set(acknowledged)
    assert {task_id: task["title"] for task_id, task in stored.items()} == {
        task_id: title for task_id, (title, _) in acknowledged.items()
    }
    for task_id, (_, etag) in list(acknowledged.items())[::4]:
        assert (await client.get(f"/api/tasks/{task_id}", headers=auth(user))).headers["etag"] == etag
    assert_no_server_errors(server)


@dataclass
class Writers:
    """Concurrent writers creating tasks until told to stop, recording every answer."""

    client: httpx.AsyncClient
    users: list[str] = field(default_factory=lambda: [new_user() for _ in range(4)])
    statuses: list[int] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # id -> owner, for every 201
    failures: list[str] = field(default_factory=list)  # transport errors, malformed 503s
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every answer

    async def run(self, user: str) -> None:
        for index in itertools.count():
            if self.stop.is_set():
                return
            try:
                response = await self.client.post("/api/tasks", json={"title": f"w{index}"}, headers=auth(user))
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.progress.set()
                return
            self.statuses.append(response.status_code)
            self.progress.set()
            if response.status_code == 201:
                self.created[response.json()["id"]] = user
            elif response.status_code == 503:
                if (
                    response.headers.get("content-type") != "application/problem+json"
                    or not response.headers.get("retry-after", "").isdigit()
                ):
                    self.failures.append(f"malformed 503: {response.headers} {response.text}")
                await asyncio.sleep(0.05)  # a polite client; Retry-After would say 2 s
            else:
                self.failures.append(f"{response.status_code}: {response.text}")

    async def until(self, status: int, count: int) -> None:
        """Wait until `count` more answers with `status` arrived (bounded)."""
        target = self.statuses.count(status) + count
        try:
            async with asyncio.timeout(WAIT_TIMEOUT):
                while self.statuses.count(status) < target and not self.failures:
                    self.progress.clear()
                    await self.progress.wait()
        except TimeoutError:
            pytest.fail(f"no {count} x {status} within {WAIT_TIMEOUT} s: {self.statuses[-20:]}")


async def test_crash_during_concurrent_writes_is_2xx_or_503_never_500(
    cluster: PostgresCluster, server: APIServer, client: httpx.AsyncClient
) -> None:
    writers = Writers(client)
    tasks = [asyncio.create_task(writers.run(user)) for user in writers.users]
    try:
        await writers.until(201, 20)
        await asyncio.to_thread(cluster.crash)  # the writers keep going while PostgreSQL dies
        await writers.until(503, 8)
        await asyncio.to_thread(cluster.start)
        await writers.until(201, 20)
    finally:
        writers.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=HTTP_TIMEOUT * 2)

    errors = [line for line in server.log().splitlines() if '"ERROR"' in line]
    assert not writers.failures, f"{writers.failures[:3]}\nserver log:\n" + "\n".join(errors[:10])
    assert set(writers.statuses) == {201, 503}
    # Every 201 was committed before it was sent: all of them survived the crash.
    for user in writers.users:
        stored = await all_tasks(client, user)
        acknowledged = {task_id for task_id, owner in writers.created.items() if owner == user}
        assert acknowledged <= set(stored), f"lost {len(acknowledged - set(stored))} acknowledged writes"
    assert_no_server_errors(server)
