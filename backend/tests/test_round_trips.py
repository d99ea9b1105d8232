"""Round trips per write, counted on the wire (tests/support/pgwire.py: a proxy between the app and
PostgreSQL that reads what the app's driver sends).

On PostgreSQL with a direct connection a create without Idempotency-Key, a PUT, a PATCH and a
DELETE are one statement on an autocommit connection: one round trip, no BEGIN or COMMIT
(app/services/changes.py, "writing in one statement"). asyncpg prepares each statement once per
connection (one more round trip the first time), so the counts are taken after a warm-up. A create
with Idempotency-Key stays one transaction; behind a transaction-mode pooler (the statement time
limit is a SET LOCAL) every write does too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import httpx
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from app.database import Database, create_engine
from app.schemas.task import TaskCreate
from app.services import tasks as service
from tests.support import auth, new_user
from tests.support.apps import IN_CI, http_client, make_settings, postgres_database, postgres_reachable, running_app
from tests.support.pgwire import WireLog, wire_proxy

pytestmark = pytest.mark.postgres_only

WARM_UP = 4  # requests of each shape first: every pooled connection has prepared its statements


@dataclass
class Wired:
    """An app whose database traffic goes through the counting proxy."""

    client: httpx.AsyncClient
    log: WireLog
    proxied_url: str
    direct_url: str


@pytest.fixture(scope="module")
async def wired() -> AsyncIterator[Wired]:
    """The app on a fresh PostgreSQL database, through the proxy (LISTEN bypasses it)."""
    if "postgresql" not in os.environ.get("TEST_DATABASES", "sqlite,postgresql"):
        pytest.skip("PostgreSQL tests are off (TEST_DATABASES)")
    if not await postgres_reachable():
        if IN_CI:
            pytest.fail("PostgreSQL is not reachable and CI=true")
        pytest.skip("PostgreSQL is not reachable")
    async with postgres_database() as direct_url:
        url = make_url(direct_url)
        async with wire_proxy(url.host or "127.0.0.1", url.port or 5432) as (port, log):
            proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
            settings = make_settings(proxied, DATABASE_URL_DIRECT=direct_url, DB_POOL_SIZE=2)
            async with running_app(settings) as app, http_client(app) as client:
                yield Wired(client, log, proxied, direct_url)


def engine_dialect() -> PGDialect_asyncpg:
    """The dialect the app's engine compiles with on PostgreSQL."""
    return PGDialect_asyncpg()  # type: ignore[no-untyped-call]


def _no_transaction(statements: list[str]) -> None:
    words = {statement.split(None, 1)[0].upper() for statement in statements if statement.strip()}
    assert not words & {"BEGIN", "COMMIT", "START", "ROLLBACK", "SET"}, statements


async def _counted(wired: Wired, request: Any) -> tuple[httpx.Response, int, list[str]]:
    mark = wired.log.mark()
    response = await request()
    return response, wired.log.round_trips(mark), wired.log.statements(mark)


async def _create(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post("/api/tasks", json={"title": "t", "priority": "low"}, headers=headers)
    assert response.status_code == 201, response.text
    return {**response.json(), "etag": response.headers["ETag"]}


async def test_each_single_statement_write_is_one_round_trip_without_begin(wired: Wired) -> None:
    client, headers = wired.client, auth(new_user())
    live = [await _create(client, headers) for _ in range(6 * (WARM_UP + 1))]

    def post() -> Any:
        return client.post("/api/tasks", json={"title": "p", "priority": "high"}, headers=headers)

    def put(task: dict[str, Any]) -> Any:
        return lambda: client.put(f"/api/tasks/{task['id']}", json={"title": "r"}, headers=headers)

    def patch(task: dict[str, Any], *, if_match: bool = False) -> Any:
        extra = {"If-Match": task["etag"]} if if_match else {}
        return lambda: client.patch(f"/api/tasks/{task['id']}", json={"status": "completed"}, headers=headers | extra)

    def delete(task: dict[str, Any], *, if_match: bool = False) -> Any:
        extra = {"If-Match": task["etag"]} if if_match else {}
        return lambda: client.delete(f"/api/tasks/{task['id']}", headers=headers | extra)

    shapes: dict[str, Any] = {
        "POST": lambda: post,
        "PUT": lambda: put(live.pop()),
        "PATCH": lambda: patch(live.pop()),
        "PATCH If-Match": lambda: patch(live.pop(), if_match=True),
        "DELETE": lambda: delete(live.pop()),
        "DELETE If-Match": lambda: delete(live.pop(), if_match=True),
    }
    for name, shape in shapes.items():
        for attempt in range(WARM_UP + 1):
            response, trips, statements = await _counted(wired, shape())
            assert response.status_code in (200, 201, 204), (name, response.text)
            _no_transaction(statements)
            if attempt == WARM_UP:
                assert trips == 1, (name, trips, statements)


async def test_a_miss_takes_no_change_number(wired: Wired) -> None:
    client, owner = wired.client, new_user()
    headers = auth(owner)
    task = await _create(client, headers)
    connection = await asyncpg.connect(wired.direct_url)
    try:
        before = await connection.fetchval("SELECT seq FROM change_counters WHERE user_id = $1", owner)
        stale = {"If-Match": '"99"'}
        missing = f"/api/tasks/{uuid.uuid4()}"
        answers = [
            await client.patch(f"/api/tasks/{task['id']}", json={"title": "x"}, headers=headers | stale),
            await client.delete(f"/api/tasks/{task['id']}", headers=headers | stale),
            await client.patch(missing, json={"title": "x"}, headers=headers),
            await client.put(missing, json={"title": "x"}, headers=headers),
            await client.delete(missing, headers=headers),
            await client.patch(f"/api/tasks/{task['id']}", json={"title": "x"}, headers=auth(new_user())),
        ]
        assert [answer.status_code for answer in answers] == [412, 412, 404, 404, 404, 403]
        after = await connection.fetchval("SELECT seq FROM change_counters WHERE user_id = $1", owner)
        assert after == before
        assert await connection.fetchval("SELECT count(*) FROM task_tombstones WHERE user_id = $1", owner) == 0
    finally:
        await connection.close()


async def test_a_create_with_idempotency_key_stays_one_transaction(wired: Wired) -> None:
    headers = auth(new_user()) | {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    response, trips, statements = await _counted(
        wired, lambda: wired.client.post("/api/tasks", json={"title": "k"}, headers=headers)
    )
    assert response.status_code == 201
    assert any(statement.upper().startswith("BEGIN") for statement in statements), statements
    assert trips > 1


async def test_behind_a_pooler_a_write_keeps_its_transaction_and_time_limit(wired: Wired) -> None:
    # As app.main builds it for a pooled DATABASE_URL: the limit is a SET LOCAL in each transaction.
    engine = create_engine(wired.proxied_url, statement_timeout_ms=5000)
    database = Database(engine, local_timeout_ms=5000)
    owner = new_user()
    try:
        async with database.writer(owner) as conn:
            created = await service.create_task(conn, owner, TaskCreate(title="pooled"))
        mark = wired.log.mark()
        async with database.writer(owner) as conn:
            await service.update_task(conn, owner, created.task.id, {"title": "pooled 2"}, None)
        used = wired.log.connection_of(mark, "UPDATE tasks")
        statements = [statement.upper().rstrip(";") for statement in wired.log.statements(mark, used)]
    finally:
        await database.dispose()
    # BEGIN, SET LOCAL, the stamped UPDATE (one statement), COMMIT.
    assert statements[0].startswith("BEGIN"), statements
    assert statements[1] == "SET LOCAL STATEMENT_TIMEOUT = 5000", statements
    assert "UPDATE TASKS" in statements[2], statements
    assert statements[3:] == ["COMMIT"], statements


async def test_the_stamp_is_taken_before_any_task_row_is_read(wired: Wired) -> None:
    # PostgreSQL's plan of the update and the delete: the scan of `tasks` sits under a One-Time
    # Filter on the stamp's number, evaluated (running the stamp, taking the counter lock) first.
    dialect = engine_dialect()
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "new_title": "x",
        "task_id": uuid.uuid4(),
        "owner_id": new_user(),
        "now": now,
        "due": None,
    }
    statements = (
        # Unconditional (an If-Match adds a version test to the same shape).
        service._stamped_update_statement(("title",), conditional=False),
        service._stamped_delete_statement(conditional=False),
    )
    connection = await asyncpg.connect(wired.direct_url)
    try:
        for statement in statements:
            compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
            params = compiled.construct_params(values) or {}
            args = [params[name] for name in compiled.positiontup or ()]
            plan = "\n".join(row[0] for row in await connection.fetch("EXPLAIN (COSTS OFF) " + compiled.string, *args))
            gate = plan.index("One-Time Filter: ($")
            assert "IS NOT NULL" in plan[gate : plan.index("\n", gate)], plan
            # Below the gate: the scan of the written table.
            assert " on tasks" in plan[gate:].split("\n", 2)[1], plan
    finally:
        await connection.close()
