"""Fixtures: migrated SQLite and PostgreSQL databases, the app (in-process, through httpx's ASGI
transport), and settings on the session's database. The harnesses live in tests/support/.

Every API test runs once per database. PostgreSQL is used when reachable; with CI=true an
unreachable PostgreSQL fails the run instead of skipping. TEST_DATABASES=sqlite (what `make
test-fast` sets) runs the SQLite half only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from tests.support.apps import (
    DIRECT_URLS,
    IN_CI,
    PG_ADMIN_URL,
    TEST_THROUGH_POOLER,
    http_client,
    make_settings,
    migrate,
    postgres_database,
    postgres_reachable,
    running_app,
)

DATABASES = [name.strip() for name in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if name.strip()]


@pytest.fixture(scope="session", params=DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A migrated database of each kind for the whole run.

    TEST_DATABASE=pooler routes the PostgreSQL run through the local Neon-style pooler
    (scripts/pgbouncer: PgBouncer, transaction mode, TLS): a fresh database migrated through the
    direct URL, used through a pooled URL in Neon's shape (tests/support/pooler.py). A pooler that does not
    start then fails the run.
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tasks.db'}"
        await asyncio.to_thread(migrate, url)
        yield url
        return
    if not await postgres_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL.split('@')[-1]} and CI=true")
        pytest.skip("PostgreSQL is not reachable")
    if TEST_THROUGH_POOLER:
        from tests.support.pooler import pooled_database, pooler_running

        with pooler_running(required=True) as pooler:
            async with pooled_database(pooler, PG_ADMIN_URL) as pooled:
                DIRECT_URLS[pooled.url] = pooled.direct_url
                yield pooled.url
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def backend(database_url: str) -> str:
    """`sqlite` or `postgresql`, for tests that behave differently per database."""
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture(scope="session")
def direct_database_url(database_url: str) -> str | None:
    """The session database's direct URL when `database_url` goes through the pooler (else None)."""
    return DIRECT_URLS.get(database_url)


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
