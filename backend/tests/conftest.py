"""Fixtures: a migrated SQLite and PostgreSQL database, the app over real HTTP (httpx), real tokens.

Every API test runs once per database. PostgreSQL is used when reachable; with CI=true an
unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic.config import Config
from fastapi import FastAPI

from alembic import command
from app.config import Settings
from app.main import create_app
from tests.support import SECRET

BACKEND_DIR = Path(__file__).resolve().parents[1]
# A server where the suite may create and drop its own databases.
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _postgres_reachable() -> bool:
    try:
        connection = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def migrate(database_url: str) -> None:
    """Apply the Alembic migrations to `database_url` (what `make migrate` does)."""
    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database for this run, dropped afterwards."""
    name = f"taskapi_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A migrated database of each kind for the whole run.

    TEST_DATABASE=pooler routes the PostgreSQL run through the local Neon-style pooler
    (scripts/pgbouncer: PgBouncer, transaction mode, TLS): a fresh database migrated through the
    direct URL, used through a pooled URL in Neon's shape (tests/pooler.py). A pooler that does not
    start then fails the run.
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tasks.db'}"
        await asyncio.to_thread(migrate, url)
        yield url
        return
    if not await _postgres_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL.split('@')[-1]} and CI=true")
        pytest.skip("PostgreSQL is not reachable")
    if TEST_THROUGH_POOLER:
        from tests.pooler import pooled_database, pooler_running

        with pooler_running(required=True) as pooler:
            async with pooled_database(pooler, PG_ADMIN_URL) as pooled:
                yield pooled.url
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def backend(database_url: str) -> str:
    """`sqlite` or `postgresql`, for tests that behave differently per database."""
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: never reads the developer's .env."""
    values: dict[str, Any] = {"DATABASE_URL": database_url, "JWT_SECRET": SECRET, **overrides}
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan (engine, verifier) running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def http_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client speaking HTTP to the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    """The app on the session's database, default settings."""
    async with running_app(make_settings(database_url, CORS_ORIGINS="http://localhost:3000")) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the session's app."""
    async with http_client(app) as c:
        yield c


@pytest.fixture
def settings_factory(database_url: str) -> Callable[..., Settings]:
    """Build settings on the session's database with overrides."""
    return lambda **overrides: make_settings(database_url, **overrides)


# TEST_DATABASE=pooler: the `postgresql` database_url goes through the local PgBouncer (see above).
TEST_THROUGH_POOLER = os.environ.get("TEST_DATABASE", "").lower() == "pooler"
