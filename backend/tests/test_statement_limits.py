"""Bounded database cost per request, on both databases: every statement has a time limit, one
user holds at most DB_MAX_SLOTS_PER_USER database slots, and an abandoned request's statement is
stopped. Timings are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.database import Database
from app.errors import QueryTimeout, TooManyRequests
from app.schemas.task import TaskCreate
from app.services import tasks as service
from tests.support import assert_problem, auth, hs256_token, new_user
from tests.support.apps import http_client, make_settings, running_app
from tests.support.servers import APIServer

# A statement that runs for seconds on each database unless something stops it.
SLOW_STATEMENT = {
    "postgresql": "SELECT pg_sleep(30)",
    "sqlite": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
}
HOSTILE_TASKS = 300
# Every trigram of the search is in there (an index cannot rule a row out) and it matches only at
# the very end, so a substring search costs about len(q) steps per character searched.
HOSTILE_DESCRIPTION = "a" * 9_999 + "b"
HOSTILE_QUERY = "a" * 199 + "b"


@pytest.fixture
async def limited_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, DB_STATEMENT_TIMEOUT_MS=300, DB_MAX_SLOTS_PER_USER=2, DB_POOL_SIZE=6, DB_CONNECT_TIMEOUT=1
    )
    async with running_app(settings) as app:
        yield app


@pytest.mark.parametrize("kind", ["reader", "transaction"])
async def test_statement_over_the_time_limit_is_query_timeout(limited_app: FastAPI, backend: str, kind: str) -> None:
    db: Database = limited_app.state.database
    owner = new_user()
    started = time.perf_counter()
    with pytest.raises(QueryTimeout):
        async with getattr(db, kind)(owner) as conn:
            await conn.execute(text(SLOW_STATEMENT[backend]))
    print(f"{backend} {kind}: stopped after {time.perf_counter() - started:.2f} s (limit 0.3 s)")
    # The connection went back to the pool in working order.
    async with db.reader(owner) as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1


async def test_owner_holds_at_most_their_share_of_slots(limited_app: FastAPI) -> None:
    db: Database = limited_app.state.database
    greedy, other = new_user(), new_user()
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with db.reader(greedy):
            held.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await held.wait()
    await asyncio.sleep(0.05)  # both holders are inside
    try:
        with pytest.raises(TooManyRequests) as raised:
            async with db.reader(greedy):
                pass
        assert raised.value.headers["Retry-After"] == "1"
        # Everyone else is served at once.
        async with db.transaction(other) as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        release.set()
        await asyncio.gather(*holders)
    # Slots come back: the greedy owner is served again, and nothing is left behind per owner.
    async with db.reader(greedy):
        pass
    assert db._owners == {}


async def seed_hostile(app: FastAPI, owner: str, count: int = HOSTILE_TASKS) -> None:
    """`count` tasks whose descriptions make a naive substring search slow."""
    db: Database = app.state.database
    async with db.transaction(owner) as conn:
        for index in range(count):
            data = TaskCreate(title=f"hostile {index}", description=HOSTILE_DESCRIPTION)
            await service.create_task(conn, owner, data)


async def test_hostile_search_does_not_stall_other_users(limited_app: FastAPI, backend: str) -> None:
    hostile, victim = new_user(), new_user()
    await seed_hostile(limited_app, hostile)
    async with http_client(limited_app) as client:

        async def search() -> httpx.Response:
            return await client.get(
                "/api/tasks", params={"q": HOSTILE_QUERY, "limit": 1}, headers=auth(hostile), timeout=30
            )

        async def victim_calls() -> list[tuple[int, float]]:
            results = []
            for index in range(5):
                for request in (
                    client.get("/api/tasks", headers=auth(victim)),
                    client.post("/api/tasks", json={"title": f"victim {index}"}, headers=auth(victim)),
                ):
                    started = time.perf_counter()
                    response = await request
                    results.append((response.status_code, time.perf_counter() - started))
                await asyncio.sleep(0.05)
            return results

        searches = [asyncio.create_task(search()) for _ in range(10)]
        await asyncio.sleep(0.05)
        victim_results = await victim_calls()
        hostile_responses = await asyncio.gather(*searches)
    print(f"{backend}: victim timings (s): {[round(t, 3) for _, t in victim_results]}")
    print(f"{backend}: hostile statuses: {sorted(r.status_code for r in hostile_responses)}")
    assert all(status in (200, 201) for status, _ in victim_results), victim_results
    for response in hostile_responses:
        # The time limit (422) or the user's share of slots (429) ends it; never 500 or 503.
        problem = assert_problem(response, response.status_code)
        assert problem["status"] in (422, 429), problem


@pytest.mark.slow
async def test_abandoned_request_releases_its_slot(database_url: str, backend: str, tmp_path: Path) -> None:
    """A client that disconnects mid-search does not keep its database slot (and statement) busy."""
    settings = {"DB_STATEMENT_TIMEOUT_MS": "60000", "DB_MAX_SLOTS_PER_USER": "1", "DB_CONNECT_TIMEOUT": "1"}
    hostile = new_user()
    async with running_app(make_settings(database_url)) as app:
        # Enough for the search to outlast the server's wait before it watches for a disconnect
        # (app.middleware.WATCH_AFTER_SECONDS, 1 s) on a fast, idle machine too: 300 took 0.85 s.
        await seed_hostile(app, hostile, count=HOSTILE_TASKS * 6)
    with APIServer(database_url, tmp_path / "api.log", settings=settings) as server:
        path = f"/api/tasks?limit=1&q={HOSTILE_QUERY}"
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hs256_token(hostile)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request.encode())
            await asyncio.sleep(0.5)  # the search is running
            if backend == "postgresql":
                assert await active_statements(database_url, "ILIKE") == 1
        # Disconnected. With the one slot this user may hold still busy, their next request would
        # wait DB_CONNECT_TIMEOUT and get 429; it is served because the search was stopped.
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            response = await client.get("/api/tasks", params={"limit": 1}, headers=auth(hostile))
        assert response.status_code == 200, response.text
        if backend == "postgresql":
            assert await active_statements(database_url, "ILIKE") == 0
    assert '"status": 499' in server.log() or '"status":499' in server.log(), server.log_tail()


async def active_statements(database_url: str, fragment: str) -> int:
    """How many statements containing `fragment` PostgreSQL is running now."""
    connection = await asyncpg.connect(database_url.split("?")[0])
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
            f"%{fragment}%",
        )
        return count
    finally:
        await connection.close()


async def test_cancelled_request_stops_its_statement(database_url: str, backend: str) -> None:
    """Cancelling a request (its client went away) stops its statement on the database as well."""
    async with running_app(make_settings(database_url, DB_STATEMENT_TIMEOUT_MS=600_000)) as app:
        db: Database = app.state.database

        async def request() -> None:
            async with db.reader(new_user()) as conn:
                await conn.execute(text(SLOW_STATEMENT[backend]))

        task = asyncio.create_task(request())
        await asyncio.sleep(0.3)  # the statement is running
        task.cancel()
        # The request ends once its connection is released, which waits for the statement: left
        # running, it would go on until the 10-minute time limit.
        done, _ = await asyncio.wait({task}, timeout=30)
        assert task in done and task.cancelled()
        if backend == "postgresql":
            await asyncio.sleep(0.2)  # the cancel request travels on its own connection
            assert await active_statements(database_url, "pg_sleep") == 0
        await db.dispose()
