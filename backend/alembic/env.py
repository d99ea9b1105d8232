"""Alembic environment: migrations run through the app's own async engine and URL translation."""

from __future__ import annotations

import asyncio
import logging
import sys
from logging.config import fileConfig

from pydantic import ValidationError
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables on the metadata)
from alembic import context
from app.config import DatabaseSettings, config_error_line
from app.database import create_engine
from app.dburl import connection_failure, engine_spec

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _database_url() -> tuple[str, str]:
    # Tests pass the URL in; otherwise the settings' migration URL (the direct one if given: DDL
    # does not belong on a transaction-mode pooler). Returned with the name to blame it on.
    url = config.attributes.get("database_url")
    if isinstance(url, str):
        return url, "the database URL"
    try:
        settings = DatabaseSettings()
    except ValidationError as exc:
        sys.exit(config_error_line(exc))
    name = "DATABASE_URL" if settings.DATABASE_URL_DIRECT is None else "DATABASE_URL_DIRECT"
    return settings.migration_url(), name


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def _migrate() -> None:
    url, name = _database_url()
    try:
        asyncio.run(_run_online(url))
    except Exception as exc:
        # A database that cannot be used is one line naming the cause, not a traceback; anything
        # else (a failing migration) keeps its traceback.
        cause = connection_failure(exc)
        if cause is None:
            raise
        sys.exit(f"cannot migrate ({name}): {cause}")
    # After the run, so that a failure stays one line.
    tls_warning = engine_spec(url, connect_timeout=1).tls_warning
    if tls_warning is not None:
        logging.getLogger("alembic.env").warning("%s: %s", name, tls_warning)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
_migrate()
