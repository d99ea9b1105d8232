"""The app behind a real PgBouncer in transaction mode with TLS (scripts/pgbouncer), as on Neon's
pooled endpoint: DATABASE_URL in Neon's shape, migrations through the direct URL, API flows, a burst
of concurrent requests through a real multi-worker uvicorn, and clean 503s when the pooler refuses us.

The pooler is started by `scripts/pgbouncer/start.sh` (root, or pgbouncer installed). Without it these
tests are skipped, unless CI=true, where a pooler that does not start fails the run.

The whole API suite can run through the pooler too: `TEST_DATABASE=pooler pytest` (see conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.dburl import engine_spec
from tests.support import alembic_upgrade, assert_problem, auth, new_user, only_line
from tests.support.apps import IN_CI, PG_ADMIN_URL, http_client, make_settings, running_app
from tests.support.pooler import POOLER_ROLE, PooledDatabase, Pooler, pooled_database, pooler_running
from tests.support.servers import APIServer

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

# A burst this size, over 2 workers x (10 + 10) app connections and PgBouncer's 20 server
# connections, makes every server connection serve many clients' transactions in turn.
BURST_REQUESTS = 240
SERVER_ERRORS = re.compile(r"prepared.statement|database error|unhandled error", re.IGNORECASE)


@pytest.fixture(scope="session")
def pooler() -> Iterator[Pooler]:
    """The local Neon-style pooler, started for this run (stopped afterwards if we started it)."""
    with pooler_running(required=IN_CI) as running:
        yield running


@pytest.fixture(scope="module")
async def pooled(pooler: Pooler) -> AsyncIterator[PooledDatabase]:
    """A database migrated through the direct URL and reachable through the pooler."""
    async with pooled_database(pooler, PG_ADMIN_URL) as database:
        yield database


@pytest.fixture(scope="module")
async def pooled_app(pooled: PooledDatabase) -> AsyncIterator[FastAPI]:
    """The app with DATABASE_URL = the pooled URL in Neon's shape."""
    async with running_app(make_settings(pooled.url)) as application:
        yield application


@pytest.fixture
async def pooled_client(pooled_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the pooled app."""
    async with http_client(pooled_app) as client:
        yield client


# --- the URL -----------------------------------------------------------------------------------


def test_pooled_url_neon_shape_is_detected_as_a_pooler(pooled: PooledDatabase) -> None:
    assert "sslmode=require&channel_binding=require&sslrootcert=" in pooled.url
    spec = engine_spec(pooled.url, connect_timeout=3)
    assert spec.behind_pooler
    assert spec.connect_args["statement_cache_size"] == 0
    # require + sslrootcert: the chain is verified (libpq's verify-ca), so there is nothing to warn about.
    assert isinstance(spec.connect_args["ssl"], ssl.SSLContext)
    assert spec.connect_args["ssl"].verify_mode == ssl.CERT_REQUIRED
    assert spec.tls_warning is None


async def test_pooled_health_is_ok(pooled_client: httpx.AsyncClient) -> None:
    response = await pooled_client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok"}


# --- API flows through the pooler ----------------------------------------------------------------


async def test_pooled_crud_flow_with_if_match(pooled_client: httpx.AsyncClient) -> None:
    user = new_user()
    created = await pooled_client.post(
        "/api/tasks",
        json={"title": "pooled", "priority": "high", "due_date": "2026-12-01T10:00:00Z"},
        headers=auth(user),
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert created.headers["location"] == f"/api/tasks/{task_id}"

    listed = await pooled_client.get("/api/tasks", headers=auth(user))
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()["items"]] == [task_id]
    assert listed.json()["total"] == 1

    got = await pooled_client.get(f"/api/tasks/{task_id}", headers=auth(user))
    assert got.status_code == 200
    etag = got.headers["etag"]
    assert etag == created.headers["etag"]

    patched = await pooled_client.patch(
        f"/api/tasks/{task_id}", json={"status": "completed"}, headers={**auth(user), "If-Match": etag}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "completed"
    assert patched.headers["etag"] != etag

    stale = await pooled_client.patch(
        f"/api/tasks/{task_id}", json={"title": "lost update"}, headers={**auth(user), "If-Match": etag}
    )
    assert_problem(stale, 412)
    assert_problem(await pooled_client.delete(f"/api/tasks/{task_id}", headers={**auth(user), "If-Match": etag}), 412)

    replaced = await pooled_client.put(
        f"/api/tasks/{task_id}", json={"title": "replaced"}, headers={**auth(user), "If-Match": patched.headers["etag"]}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["title"] == "replaced" and replaced.json()["status"] == "pending"

    deleted = await pooled_client.delete(
        f"/api/tasks/{task_id}", headers={**auth(user), "If-Match": replaced.headers["etag"]}
    )
    assert deleted.status_code == 204
    assert_problem(await pooled_client.get(f"/api/tasks/{task_id}", headers=auth(user)), 404)


async def test_pooled_isolation_other_user_is_403(pooled_client: httpx.AsyncClient) -> None:
    alice, bob = new_user(), new_user()
    created = await pooled_client.post("/api/tasks", json={"title": "alice's"}, headers=auth(alice))
    url = f"/api/tasks/{created.json()['id']}"
    assert_problem(await pooled_client.get(url, headers=auth(bob)), 403)
    assert_problem(await pooled_client.patch(url, json={"title": "mine"}, headers=auth(bob)), 403)
    assert_problem(await pooled_client.delete(url, headers=auth(bob)), 403)
    listed = await pooled_client.get("/api/tasks", headers=auth(bob))
    assert listed.json()["items"] == [] and listed.json()["total"] == 0
    assert (await pooled_client.get(url, headers=auth(alice))).json()["title"] == "alice's"


async def test_pooled_listing_filters_search_sort_and_pages(pooled_client: httpx.AsyncClient) -> None:
    user = new_user()
    for index, (priority, status) in enumerate([("low", "pending"), ("high", "completed"), ("medium", "pending")]):
        body = {"title": f"report {index} 100%_done", "priority": priority, "status": status}
        assert (await pooled_client.post("/api/tasks", json=body, headers=auth(user))).status_code == 201
    # Every parameter type (text, enum, timestamptz, int) goes through unnamed statements.
    params = {"q": "100%_", "status": "pending", "sort": "-priority", "due_before": "2100-01-01T00:00:00Z"}
    listed = await pooled_client.get("/api/tasks", params={**params, "limit": "1"}, headers=auth(user))
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 0  # no due dates: due_before excludes them
    del params["due_before"]
    pages = [
        (await pooled_client.get("/api/tasks", params={**params, "limit": "1", "offset": str(o)}, headers=auth(user)))
        for o in range(3)
    ]
    assert [p.json()["total"] for p in pages] == [2, 2, 2]
    assert [t["priority"] for p in pages for t in p.json()["items"]] == ["medium", "low"]


async def test_pooled_concurrent_if_match_exactly_one_wins(pooled_client: httpx.AsyncClient) -> None:
    user = new_user()
    created = await pooled_client.post("/api/tasks", json={"title": "race"}, headers=auth(user))
    url, etag = f"/api/tasks/{created.json()['id']}", created.headers["etag"]
    responses = await asyncio.gather(
        *(
            pooled_client.patch(url, json={"title": f"writer {n}"}, headers={**auth(user), "If-Match": etag})
            for n in range(12)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] + [412] * 11


# --- what the pooler refuses ---------------------------------------------------------------------


async def test_pooler_rejects_startup_parameters_but_not_the_apps_connections(
    pooler: Pooler, pooled: PooledDatabase, pooled_client: httpx.AsyncClient
) -> None:
    # The pooler really is strict (as Neon's is) ...
    with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
        await asyncpg.connect(
            pooled.url.split("?")[0],
            ssl=ssl.create_default_context(cafile=pooler.ca_file),
            server_settings={"search_path": "public"},
            timeout=10,
        )
    # ... and the app's connections pass it: fresh ones (a new app) and pooled ones, reads and writes.
    async with running_app(make_settings(pooled.url, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)) as app, http_client(app) as c:
        assert (await c.get("/health")).status_code == 200
    assert (await pooled_client.post("/api/tasks", json={"title": "t"}, headers=auth(new_user()))).status_code == 201


@pytest.mark.parametrize("case", ["tls-less", "wrong-password"])
async def test_pooler_refusing_the_connection_is_a_clean_503(pooler: Pooler, pooled: PooledDatabase, case: str) -> None:
    # PgBouncer answers both with an error (SQLSTATE 08P01: "SSL required", "SASL authentication
    # failed") instead of closing the socket: the app must still see "database unreachable".
    if case == "tls-less":
        url = pooler.neon_url(pooled.name, sslmode="disable", channel_binding="disable")  # libpq: both or neither
    else:
        url = pooler.neon_url(pooled.name).replace(":taskapi-secret@", ":not-the-password@")
    async with running_app(make_settings(url, DB_CONNECT_TIMEOUT=3)) as app, http_client(app) as client:
        for path, headers in (("/health", {}), ("/api/tasks", auth(new_user()))):
            response = await asyncio.wait_for(client.get(path, headers=headers), timeout=10)
            assert_problem(response, 503)
            assert response.headers["retry-after"].isdigit()
            for secret in ("taskapi-secret", "not-the-password", "6432", "pgbouncer", "SSL", "localhost"):
                assert secret not in response.text


# --- sslmode as libpq means it, against a self-signed certificate --------------------------------------

NOT_VERIFIED = "sslmode=require encrypts the connection but does not verify"
NOT_TRUSTED = "the server's certificate is not trusted"


@contextlib.asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """A database owned by the pooler's role with no tables yet, dropped afterwards."""
    name = f"taskapi_pooled_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{POOLER_ROLE}"')
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_pooled_require_without_root_cert_migrates_and_serves(pooler: Pooler, tmp_path: Path) -> None:
    # The URL as Neon shows it, against a certificate no trust store knows: encrypted, not verified,
    # exactly as psql would connect - and one warning that says so.
    async with empty_database() as name:
        url = pooler.neon_url(name, root_cert=False)
        assert "sslrootcert" not in url and "sslmode=require" in url

        migrated = await asyncio.to_thread(alembic_upgrade, DATABASE_URL=url)
        assert migrated.returncode == 0, migrated.stderr
        assert len([line for line in migrated.stderr.splitlines() if NOT_VERIFIED in line]) == 1, migrated.stderr
        assert "taskapi-secret" not in migrated.stderr + migrated.stdout
        admin = await asyncpg.connect(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", timeout=10)
        try:
            assert await admin.fetchval("SELECT count(*) FROM alembic_version") == 1
        finally:
            await admin.close()

        server = APIServer(url, tmp_path / "api.log")
        await asyncio.to_thread(server.start)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
                assert (await client.get("/health")).status_code == 200
                user = new_user()
                created = await client.post("/api/tasks", json={"title": "over unverified TLS"}, headers=auth(user))
                assert created.status_code == 201, created.text
                listed = await client.get("/api/tasks", headers=auth(user))
                assert [task["id"] for task in listed.json()["items"]] == [created.json()["id"]]
        finally:
            await asyncio.to_thread(server.stop)
    log = server.log()
    assert len([line for line in log.splitlines() if NOT_VERIFIED in line]) == 1, server.log_tail()
    assert "database unavailable" not in log and "taskapi-secret" not in log


async def test_pooled_verify_full_without_the_ca_fails_in_one_line(
    pooler: Pooler, pooled: PooledDatabase, tmp_path: Path
) -> None:
    url = pooler.neon_url(pooled.name, sslmode="verify-full", root_cert=False)

    # make migrate: one line naming the cause, non-zero exit.
    line = only_line(await asyncio.to_thread(alembic_upgrade, DATABASE_URL=url), "taskapi-secret")
    assert line.startswith(f"cannot migrate (DATABASE_URL): {NOT_TRUSTED}"), line

    # The server: starts, logs the cause once, and answers 503 until the URL is fixed.
    server = APIServer(url, tmp_path / "api.log", settings={"DB_CONNECT_TIMEOUT": "3"})
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
            assert_problem(await client.get("/health"), 503)
            assert_problem(await client.get("/api/tasks", headers=auth(new_user())), 503)
            deadline = time.monotonic() + 10
            while "database unavailable at startup" not in server.log():
                assert time.monotonic() < deadline, server.log_tail()
                await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(server.stop)
    causes = [line for line in server.log().splitlines() if "database unavailable at startup" in line]
    assert len(causes) == 1 and NOT_TRUSTED in causes[0], server.log_tail()
    assert "Traceback" not in server.log() and "taskapi-secret" not in server.log()


async def test_pooled_wrong_password_fails_migrate_in_one_line(pooler: Pooler, pooled: PooledDatabase) -> None:
    url = pooler.neon_url(pooled.name).replace(":taskapi-secret@", ":not-the-password@")
    line = only_line(await asyncio.to_thread(alembic_upgrade, DATABASE_URL=url), "not-the-password")
    assert line == "cannot migrate (DATABASE_URL): the password was rejected (check the user name and password)"


# --- a burst through a real multi-worker server ----------------------------------------------------


@dataclass
class Outcome:
    kind: str
    expected: int
    status: int | None  # None: the request failed (connection error, timeout)
    seconds: float
    error: str = ""


async def _timed(client: httpx.AsyncClient, kind: str, expected: int, request: httpx.Request) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.send(request)
    except httpx.HTTPError as exc:
        return Outcome(kind, expected, None, time.perf_counter() - started, type(exc).__name__)
    return Outcome(kind, expected, response.status_code, time.perf_counter() - started)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def test_pooled_burst_through_uvicorn_has_no_errors(
    pooled: PooledDatabase, tmp_path: Path, record_property: Any
) -> None:
    server = APIServer(pooled.url, tmp_path / "api.log", workers=2)
    await asyncio.to_thread(server.start)
    try:
        limits = httpx.Limits(max_connections=BURST_REQUESTS, max_keepalive_connections=BURST_REQUESTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            # Seed one task per user for the reads and conditional writes of the burst.
            seeds: list[tuple[str, str, str]] = []
            for _ in range(BURST_REQUESTS // 4):
                user = new_user()
                created = await client.post("/api/tasks", json={"title": "seed"}, headers=auth(user))
                assert created.status_code == 201, created.text
                seeds.append((user, created.json()["id"], created.headers["etag"]))

            requests: list[tuple[str, int, httpx.Request]] = []
            for index in range(BURST_REQUESTS):
                user, task_id, etag = seeds[index // 4]
                # Every request carries its own freshly signed token.
                match index % 4:
                    case 0:
                        body = {"title": f"burst {index}", "description": "x" * 200}
                        request = client.build_request("POST", "/api/tasks", json=body, headers=auth(new_user()))
                        requests.append(("create", 201, request))
                    case 1:
                        params = {"sort": "-priority", "q": "seed"}
                        request = client.build_request("GET", "/api/tasks", params=params, headers=auth(user))
                        requests.append(("list", 200, request))
                    case 2:
                        request = client.build_request("GET", f"/api/tasks/{task_id}", headers=auth(user))
                        requests.append(("get", 200, request))
                    case _:
                        headers = {**auth(user), "If-Match": etag}
                        request = client.build_request(
                            "PATCH", f"/api/tasks/{task_id}", json={"status": "in_progress"}, headers=headers
                        )
                        requests.append(("patch", 200, request))

            started = time.perf_counter()
            outcomes = await asyncio.gather(*(_timed(client, *r) for r in requests))
            elapsed = time.perf_counter() - started
    finally:
        await asyncio.to_thread(server.stop)

    latencies = [o.seconds for o in outcomes]
    by_status = Counter(str(o.status or o.error) for o in outcomes)
    failed = [o for o in outcomes if o.status is None]
    server_errors = [o for o in outcomes if o.status is not None and o.status >= 500]
    unexpected = [o for o in outcomes if o.status != o.expected]
    report = (
        f"pooler burst: {len(outcomes)} concurrent requests through uvicorn (2 workers) -> PgBouncer (transaction, "
        f"TLS) in {elapsed:.2f} s; statuses {dict(by_status)}; connection errors {len(failed)}; "
        f"5xx {len(server_errors)}; p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {_percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    print(report)
    record_property("pooler_burst", report)

    log = server.log()
    assert not failed, report
    assert not server_errors, report
    assert not unexpected, f"{report}\n{[(o.kind, o.status) for o in unexpected][:20]}"
    assert not SERVER_ERRORS.findall(log), server.log_tail()
    access = [line for line in log.splitlines() if '"status"' in line]
    assert not [line for line in access if re.search(r'"status": ?5\d\d', line)]
