"""A database that cannot be used, against real servers: one line naming the cause from
`connection_failure`, at `alembic upgrade head` (what `make migrate` runs) and at app startup; never
a traceback, the URL or the password.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import text

from app.database import create_engine
from app.dburl import connection_failure
from tests.support import alembic_upgrade, assert_problem, captured_logs, only_line
from tests.support.apps import PG_ADMIN_URL, http_client, make_settings, running_app
from tests.support.servers import free_port

# Subprocesses and real servers: left out of `make test-fast`.
pytestmark = pytest.mark.slow

PASSWORD = "hunter2-db-pass"
PG_SERVER = PG_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]  # host:port of the test PostgreSQL


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a black-holed or hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port: int = listener.getsockname()[1]
        yield port


async def _postgres() -> tuple[bool, bool]:
    """Whether the test PostgreSQL is reachable, and whether it offers TLS."""
    try:
        connection = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False, False
    try:
        return True, await connection.fetchval("SHOW ssl") == "on"
    finally:
        await connection.close()


async def failure_of(url: str) -> str | None:
    """Connect through the app's engine and describe the failure; fail the test if it connects."""
    engine = create_engine(url, connect_timeout=2)
    try:
        async with asyncio.timeout(20), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return connection_failure(exc)
    finally:
        await engine.dispose()
    pytest.fail("the connection succeeded")


# --- the engine against real servers -----------------------------------------------------------------


async def test_connect_refused_port_is_named() -> None:
    line = await failure_of(f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db")
    assert line is not None and "refused" in line


async def test_connect_unknown_host_is_named() -> None:
    line = await failure_of(f"postgresql://u:{PASSWORD}@no-such-host.invalid/db")
    assert line is not None and "cannot be resolved" in line


async def test_connect_silent_server_is_a_timeout(silent_port: int) -> None:
    started = time.monotonic()
    line = await failure_of(f"postgresql://u:{PASSWORD}@127.0.0.1:{silent_port}/db?connect_timeout=1")
    assert line is not None and "did not answer in time" in line
    assert time.monotonic() - started < 10


@pytest.mark.postgres_only
@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("postgres@{server}/taskapi_no_such_database", "database does not exist"),
        ("taskapi_no_such_role@{server}/postgres", "refused this user"),
        ("postgres@{server}/postgres?sslmode=require", "does not accept TLS"),
    ],
)
async def test_connect_refusals_of_a_real_postgresql_are_named(target: str, words: str) -> None:
    reachable, offers_tls = await _postgres()
    if not reachable:
        pytest.skip("PostgreSQL is not reachable")
    if offers_tls and "sslmode=require" in target:
        pytest.skip("this PostgreSQL accepts TLS")
    line = await failure_of(f"postgresql://{target.format(server=PG_SERVER)}")
    assert line is not None and words in line


# --- make migrate -------------------------------------------------------------------------------------


def test_migrate_refused_is_one_line_without_the_password() -> None:
    port = free_port()
    line = only_line(alembic_upgrade(DATABASE_URL=f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/tasks"), PASSWORD)
    assert line.startswith("cannot migrate (DATABASE_URL): the connection was refused"), line
    assert str(port) not in line


def test_migrate_names_the_direct_url_when_it_is_the_one_used(silent_port: int) -> None:
    direct = f"postgresql://app:{PASSWORD}@127.0.0.1:{silent_port}/tasks?connect_timeout=1"
    result = alembic_upgrade(DATABASE_URL="postgresql://app@127.0.0.1:6432/tasks", DATABASE_URL_DIRECT=direct)
    assert only_line(result, PASSWORD).startswith(
        "cannot migrate (DATABASE_URL_DIRECT): the server did not answer in time"
    )


@pytest.mark.postgres_only
def test_migrate_missing_database_is_one_line() -> None:
    if not asyncio.run(_postgres())[0]:
        pytest.skip("PostgreSQL is not reachable")
    name = f"taskapi_missing_{uuid.uuid4().hex[:8]}"
    line = only_line(alembic_upgrade(DATABASE_URL=f"postgresql://postgres@{PG_SERVER}/{name}"))
    assert line == "cannot migrate (DATABASE_URL): the database does not exist", line


# --- app startup --------------------------------------------------------------------------------------


async def test_startup_logs_the_tls_warning_and_the_cause_once_and_serves_503() -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/tasks?sslmode=require"
    with captured_logs() as lines:
        async with running_app(make_settings(url, DB_CONNECT_TIMEOUT=2)) as app:
            deadline = time.monotonic() + 10
            while not any("database unavailable at startup" in line for line in lines):
                assert time.monotonic() < deadline, lines
                await asyncio.sleep(0.05)
            async with http_client(app) as client:
                assert_problem(await client.get("/health"), 503)
    warnings = [line for line in lines if "sslmode=require encrypts" in line]
    causes = [line for line in lines if "database unavailable at startup" in line]
    assert len(warnings) == 1 and len(causes) == 1, lines
    assert '"level":"WARNING"' in warnings[0] and "DATABASE_URL: " in warnings[0]
    assert "verify-full&sslrootcert=system" in warnings[0]
    assert "the connection was refused" in causes[0]
    assert not [line for line in lines if PASSWORD in line or "Traceback" in line]


async def test_startup_with_a_verified_or_local_url_has_no_tls_warning(database_url: str) -> None:
    with captured_logs() as lines:
        async with running_app(make_settings(database_url)):
            await asyncio.sleep(0.2)  # the background check of the database
    assert not [line for line in lines if "sslmode" in line or "database unavailable" in line], lines
