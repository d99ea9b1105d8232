"""Alembic environment: migrations run through the app's own async engine and URL translation."""

from __future__ import annotations

import asyncio
import sys
from logging.config import fileConfig

from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables on the metadata)
from alembic import context
from app.database import create_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _database_url() -> str:
    # Tests pass the URL in; otherwise the app's settings (a pooler URL is not for DDL: prefer the
    # direct one when given).
    url = config.attributes.get("database_url")
    if isinstance(url, str):
        return url
    from pydantic import ValidationError

    from app.config import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        from app.main import config_error_line

        sys.exit(config_error_line(exc))
    chosen = settings.DATABASE_URL_DIRECT or settings.DATABASE_URL
    return chosen.get_secret_value()


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
