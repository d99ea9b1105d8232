"""The app and its databases for tests: migrated SQLite and PostgreSQL databases, settings that never
read the developer's .env, the app with its lifespan running, and an in-process HTTP client.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from alembic.config import Config
from fastapi import FastAPI

from alembic import command
from app.config import Settings
from app.main import create_app
from tests.support import BACKEND_DIR, SECRET

# A server where the suite may create and drop its own databases.
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def postgres_reachable() -> bool:
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


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: never reads the developer's .env.

    Rate limits are off unless a test turns them on: the suite sends thousands of requests, and
    hundreds of bad tokens, from one address (tests/test_ratelimit.py covers them).
    """
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "JWT_SECRET": SECRET,
        "RATE_LIMIT_ENABLED": False,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan (engine, verifier) running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def http_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for the app, in-process through ASGI (no socket)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# TEST_DATABASE=pooler: the `postgresql` database_url goes through the local PgBouncer (see above).
TEST_THROUGH_POOLER = os.environ.get("TEST_DATABASE", "").lower() == "pooler"
# The direct (non-pooled) URL of each pooled test database: what DATABASE_URL_DIRECT is for it.
DIRECT_URLS: dict[str, str] = {}
