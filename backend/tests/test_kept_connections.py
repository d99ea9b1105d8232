"""Autocommit connections kept open between requests (app/database.py, PostgreSQL direct):
a kept connection the server closed is replaced without failing a request, and kept connections never
leave the pool short for a request that needs a transaction.

Each test owns a fresh database, so closing its connections touches no other test's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from app.database import Database
from tests.support import auth, new_user
from tests.support.apps import (
    IN_CI,
    PG_ADMIN_URL,
    http_client,
    make_settings,
    postgres_database,
    postgres_reachable,
    running_app,
)

pytestmark = pytest.mark.postgres_only


@pytest.fixture
async def database() -> AsyncIterator[str]:
    if not await postgres_reachable():
        if IN_CI:
            pytest.fail("PostgreSQL is not reachable and CI=true")
        pytest.skip("PostgreSQL is not reachable")
    async with postgres_database() as url:
        yield url


async def _reads(client: httpx.AsyncClient, user: str, task_id: str, count: int) -> list[int]:
    # Concurrent, so several connections are in use at once and then kept.
    responses = await asyncio.gather(
        *(client.get(f"/api/tasks/{task_id}" if i % 2 else "/api/tasks", headers=auth(user)) for i in range(count))
    )
    return [response.status_code for response in responses]


async def test_a_kept_connection_the_server_closed_is_replaced_without_an_error(database: str) -> None:
    async with running_app(make_settings(database)) as app, http_client(app) as client:
        user = new_user()
        created = await client.post("/api/tasks", json={"title": "kept"}, headers=auth(user))
        assert created.status_code == 201
        task_id = created.json()["id"]
        for _ in range(3):
            assert await _reads(client, user, task_id, 6) == [200] * 6

        # The server ends every connection of this database (as a restart or a failover does).
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
                database.rsplit("/", 1)[1],
            )
        finally:
            await admin.close()
        assert ended >= 1
        await asyncio.sleep(0.5)  # the client side sees the sockets close

        assert await _reads(client, user, task_id, 6) == [200] * 6
        changed = await client.patch(f"/api/tasks/{task_id}", json={"status": "completed"}, headers=auth(user))
        assert changed.status_code == 200, changed.text


async def test_kept_connections_leave_room_for_transactions(database: str) -> None:
    # Two request slots and a pool of three (one spare for /health). Two reads at once leave two
    # connections kept; two transactions held open at once must then both get a connection (each
    # gives a kept one back to the pool first) instead of the second waiting out the pool (a 503).
    settings = make_settings(database, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, DB_CONNECT_TIMEOUT=1)
    async with running_app(settings) as app, http_client(app) as client:
        db: Database = app.state.database
        users = [new_user(), new_user()]
        for _ in range(3):
            async with db.reader(users[0]) as first, db.reader(users[1]) as second:
                await first.execute(text("SELECT 1"))
                await second.execute(text("SELECT 1"))
            async with db.transaction(users[0]) as first, db.transaction(users[1]) as second:
                await first.execute(text("SELECT 1"))
                await second.execute(text("SELECT 1"))
                assert (await client.get("/health")).status_code == 200
