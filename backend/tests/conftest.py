"""Fixtures: migrated SQLite and PostgreSQL databases, the app (in-process, through httpx's ASGI
transport), and settings on the session's database. The harnesses live in tests/support/.

Every API test runs once per database. PostgreSQL is used when reachable; with CI=true an
unreachable PostgreSQL fails the run instead of skipping. TEST_DATABASES=sqlite (what `make
test-fast` sets) runs the SQLite half only.

Which tests run on which database (`pytest_collection_modifyitems` below):
- `@pytest.mark.one_database`: the database cannot change the outcome (token verification, JWKS,
  HTTP limits): such a test runs on the run's first database only (SQLite, or PostgreSQL when
  TEST_DATABASES names it alone), not again on the second.
- TEST_DATABASE=pooler (`make test-pooler`): only tests that use the session database run. A test
  that does not (its own PostgreSQL cluster, its own database, its own pooler fixture) does exactly
  the same thing as in `make test`, which already ran it.
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the runs that would repeat another run exactly (see the module docstring)."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        database = callspec.params.get("database_url") if callspec is not None else None
        if TEST_THROUGH_POOLER and "database_url" not in fixtures:
            drop.append(item)  # not on the pooled database: identical to its run in `make test`
        elif database is not None and item.get_closest_marker("one_database") and database != DATABASES[0]:
            drop.append(item)  # database-independent: once is enough
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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
