"""The migrated schema is the one the models declare: `alembic upgrade head` and app/models agree
(tables, columns, types, keys, indexes), so neither can drift from the other unnoticed. And 0005
counts the tasks that exist when it runs, and its downgrade leaves nothing behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from fastapi import FastAPI
from sqlalchemy import Connection, inspect, text
from sqlmodel import SQLModel

import app.models  # noqa: F401  (every table on the metadata)
from alembic import command
from app.database import Database, create_engine
from app.models.task import Task
from tests.support import BACKEND_DIR
from tests.support.apps import postgres_database


def _declared(item: Any, name: str | None, kind: str, reflected: bool, declared_as: Any) -> bool:
    # Migration 0003's trigram indexes exist on PostgreSQL only and are not declared on the models.
    return not (kind == "index" and reflected and declared_as is None and (name or "").endswith("_trgm"))


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": _declared})
    return list(compare_metadata(context, SQLModel.metadata))


async def test_migrations_create_what_the_models_declare(app: FastAPI) -> None:
    database: Database = app.state.database
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_differences) == []


def _alembic(database_url: str, action: str, revision: str) -> None:
    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    getattr(command, action)(config, revision)


_TASK = Task.__table__.insert()  # type: ignore[attr-defined]
_COUNTS = text("SELECT user_id, status, priority, n FROM task_counts WHERE n <> 0 ORDER BY 1, 2, 3")
_REAL = text("SELECT user_id, status, priority, count(*) FROM tasks GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")


@asynccontextmanager
async def _scratch_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    async with postgres_database() as url:
        yield url


async def test_0005_counts_existing_tasks_and_downgrades_cleanly(backend: str, tmp_path: Path) -> None:
    async with _scratch_database(backend, tmp_path) as url:
        await asyncio.to_thread(_alembic, url, "upgrade", "0004")
        engine = create_engine(url)
        try:
            rows = [
                {
                    "id": uuid.uuid4(),
                    "user_id": user,
                    "title": "t",
                    "status": status,
                    "priority": priority,
                    "created_at": datetime.now(UTC),
                    "updated_at": datetime.now(UTC),
                    "seq": 1,
                }
                for user, status, priority in [("a", "pending", "low")] * 3
                + [("a", "completed", "high"), ("b", "pending", "low")]
            ]
            async with engine.begin() as conn:
                await conn.execute(_TASK, rows)
            await asyncio.to_thread(_alembic, url, "upgrade", "head")
            async with engine.begin() as conn:
                assert (await conn.execute(_COUNTS)).all() == (await conn.execute(_REAL)).all()
                assert len((await conn.execute(_REAL)).all()) == 3
            await asyncio.to_thread(_alembic, url, "downgrade", "0004")
            async with engine.begin() as conn:
                # No table, and no trigger left behind to fail a write for want of it.
                assert "task_counts" not in await conn.run_sync(lambda c: inspect(c).get_table_names())
                await conn.execute(_TASK, {**rows[0], "id": uuid.uuid4()})
                await conn.execute(text("UPDATE tasks SET status = 'completed'"))
                await conn.execute(text("DELETE FROM tasks"))
        finally:
            await engine.dispose()
