"""Two API processes (real uvicorn servers on different ports) on one database, as when the service is
scaled out behind a load balancer: an ETag from one process is honoured by the other, a stale one is
a 412 on either, and ownership and listings are the same whichever process answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.support import assert_problem, auth, new_user
from tests.support.servers import APIServer, api_servers

# Subprocesses and real servers: left out of `make test-fast`.
pytestmark = pytest.mark.slow

HTTP_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def servers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[APIServer]]:
    """Two independent API processes (A and B) on the session's database."""
    with api_servers(database_url, tmp_path_factory.mktemp("scale-out"), 2) as started:
        yield started


@pytest.fixture
async def clients(servers: list[APIServer]) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """An HTTP client for each process: (A, B). Afterwards, neither process logged an error meanwhile."""
    logged = [len(server.log()) for server in servers]
    async with (
        httpx.AsyncClient(base_url=servers[0].url, timeout=HTTP_TIMEOUT) as a,
        httpx.AsyncClient(base_url=servers[1].url, timeout=HTTP_TIMEOUT) as b,
    ):
        yield a, b
    for server, offset in zip(servers, logged, strict=True):
        assert server.running
        assert '"level":"ERROR"' not in server.log()[offset:], server.log_tail()


async def create(client: httpx.AsyncClient, user: str, **body: Any) -> httpx.Response:
    response = await client.post("/api/tasks", json={"title": "a task", **body}, headers=auth(user))
    assert response.status_code == 201, response.text
    return response


def assert_status(response: httpx.Response, status: int) -> None:
    if status >= 400:
        assert_problem(response, status)
    else:
        assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"


def test_scale_out_processes_are_distinct(servers: list[APIServer]) -> None:
    assert len({server.port for server in servers}) == 2
    assert all(server.running for server in servers)
    assert servers[0].process is not None and servers[1].process is not None
    assert servers[0].process.pid != servers[1].process.pid


async def test_scale_out_etag_from_b_is_honoured_by_a(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    user = new_user()
    task_id = (await create(a, user)).json()["id"]
    url = f"/api/tasks/{task_id}"

    read_on_b = await b.get(url, headers=auth(user))
    assert_status(read_on_b, 200)
    patched_on_a = await a.patch(
        url, json={"status": "completed"}, headers={**auth(user), "If-Match": read_on_b.headers["etag"]}
    )
    assert_status(patched_on_a, 200)

    again_on_b = await b.get(url, headers=auth(user))
    assert again_on_b.json()["status"] == "completed"
    assert again_on_b.headers["etag"] == patched_on_a.headers["etag"] != read_on_b.headers["etag"]
    deleted_on_b = await b.delete(url, headers={**auth(user), "If-Match": patched_on_a.headers["etag"]})
    assert_status(deleted_on_b, 204)
    assert_status(await a.get(url, headers=auth(user)), 404)


async def test_scale_out_stale_etag_on_b_after_write_on_a_is_412(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    user = new_user()
    task_id = (await create(b, user, title="original")).json()["id"]
    url = f"/api/tasks/{task_id}"
    stale = (await b.get(url, headers=auth(user))).headers["etag"]

    assert_status(await a.patch(url, json={"title": "written on A"}, headers=auth(user)), 200)

    stale_headers = {**auth(user), "If-Match": stale}
    assert_status(await b.patch(url, json={"title": "lost update"}, headers=stale_headers), 412)
    assert_status(await b.put(url, json={"title": "lost update"}, headers=stale_headers), 412)
    assert_status(await b.delete(url, headers=stale_headers), 412)
    for client in (a, b):
        assert (await client.get(url, headers=auth(user))).json()["title"] == "written on A"


async def test_scale_out_concurrent_writers_across_processes_exactly_one_wins(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    user = new_user()
    created = await create(a, user)
    url, etag = f"/api/tasks/{created.json()['id']}", created.headers["etag"]
    responses = await asyncio.gather(
        *(
            (a if n % 2 else b).patch(url, json={"title": f"writer {n}"}, headers={**auth(user), "If-Match": etag})
            for n in range(10)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] + [412] * 9
    winner = next(r for r in responses if r.status_code == 200)
    for client in (a, b):
        current = await client.get(url, headers=auth(user))
        assert current.json()["title"] == winner.json()["title"]
        assert current.headers["etag"] == winner.headers["etag"]


async def test_scale_out_isolation_holds_on_either_process(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    alice, bob = new_user(), new_user()
    url = f"/api/tasks/{(await create(a, alice, title='alice only')).json()['id']}"
    for client in (a, b):
        assert_status(await client.get(url, headers=auth(bob)), 403)
        assert_status(await client.patch(url, json={"title": "bob's now"}, headers=auth(bob)), 403)
        assert_status(await client.delete(url, headers={**auth(bob), "If-Match": "*"}), 403)
        listed = await client.get("/api/tasks", headers=auth(bob))
        assert listed.json() == {"items": [], "total": 0, "limit": 50, "offset": 0, "next_cursor": None}
    assert (await b.get(url, headers=auth(alice))).json()["title"] == "alice only"


async def test_scale_out_listing_is_the_same_on_both_processes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    user = new_user()
    ids = []
    for index in range(8):
        # Alternate processes, as a round-robin load balancer would.
        created = await create((a, b)[index % 2], user, title=f"task {index}", priority=("low", "high")[index % 2])
        ids.append(created.json()["id"])
    assert_status(await b.delete(f"/api/tasks/{ids[0]}", headers=auth(user)), 204)
    assert_status(await a.patch(f"/api/tasks/{ids[1]}", json={"status": "completed"}, headers=auth(user)), 200)

    for params in ({}, {"sort": "-priority", "limit": "3", "offset": "2"}, {"status": "completed"}, {"q": "TASK 7"}):
        on_a = await a.get("/api/tasks", params=params, headers=auth(user))
        on_b = await b.get("/api/tasks", params=params, headers=auth(user))
        assert_status(on_a, 200)
        assert on_a.json() == on_b.json()
    everything = (await a.get("/api/tasks", headers=auth(user))).json()
    assert everything["total"] == 7
    assert [t["id"] for t in everything["items"]] == ids[:0:-1]  # newest first, the deleted one gone


async def test_scale_out_idempotency_key_holds_across_processes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    user = new_user()
    headers = {**auth(user), "Idempotency-Key": f"scale-out-{new_user()}"}
    # The same keyed POST sent concurrently to both processes, as a client retrying through a load balancer.
    responses = await asyncio.gather(
        *(client.post("/api/tasks", json={"title": "exactly once"}, headers=headers) for client in (a, b, a, b, a, b))
    )
    for response in responses:
        assert_status(response, 201)
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(response.headers.get("idempotent-replayed") == "true" for response in responses) == 5
    for client in (a, b):
        assert (await client.get("/api/tasks", headers=auth(user))).json()["total"] == 1
    reused = await b.post("/api/tasks", json={"title": "another body"}, headers=headers)
    assert_status(reused, 422)
