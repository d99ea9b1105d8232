"""Alembic environment: migrations run through the app's own async engine and URL translation."""

from __future__ import annotations

import asyncio
import sys
from logging.config import fileConfig

from pydantic import ValidationError
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables on the metadata)
from alembic import context
from app.config import DatabaseSettings, config_error_line
from app.database import create_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _database_url() -> str:
    # Tests pass the URL in; otherwise the settings' migration URL (the direct one if given: DDL
    # does not belong on a transaction-mode pooler).
    url = config.attributes.get("database_url")
    if isinstance(url, str):
        return url
    try:
        return DatabaseSettings().migration_url()
    except ValidationError as exc:
        sys.exit(config_error_line(exc))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(_database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
asyncio.run(_run_online())
