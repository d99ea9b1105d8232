"""The database: the engine for DATABASE_URL (translated by app.dburl), and the connections handlers
open for reads or for one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.dburl import connection_failure, engine_spec

logger = logging.getLogger("app.database")


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets readers run beside the writer; busy_timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=5000", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def create_engine(
    raw_url: str, *, pool_size: int = 10, max_overflow: int = 0, connect_timeout: float = 3.0
) -> AsyncEngine:
    """An async engine for DATABASE_URL with pooling that survives dropped connections.

    The pool holds one connection more than requests may use at once (see Database): the spare
    keeps /health answering while every request slot is busy.
    """
    spec = engine_spec(raw_url, connect_timeout=connect_timeout)
    kwargs: dict[str, Any] = {
        "connect_args": spec.connect_args,
        "hide_parameters": True,
        "pool_size": pool_size + 1,
        "max_overflow": max_overflow,
        # A request waits this long for a pooled connection, then the client gets a 503.
        "pool_timeout": connect_timeout,
    }
    if not spec.is_sqlite:
        # Neon suspends an idle compute after 5 minutes, closing its connections: recycling every
        # connection before that age means a pooled one is never stale after an idle spell, without
        # a ping round trip on every checkout. A connection that dies anyway (a restart) fails its
        # request with 503 and makes the pool replace every connection older than it.
        kwargs["pool_recycle"] = 240
        if spec.behind_pooler:
            kwargs["url"] = spec.url.update_query_dict({"prepared_statement_cache_size": "0"})
    if spec.is_sqlite and spec.url.database not in (None, "", ":memory:"):
        # A missing folder is created; one that cannot be is reported as 503 on first use.
        with contextlib.suppress(OSError):
            Path(str(spec.url.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(kwargs.pop("url", spec.url), **kwargs)
    if spec.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """The engine of one app instance: transactional and read-only connections, handed out fairly."""

    def __init__(
        self, engine: AsyncEngine, *, connections: int = 10, wait_timeout: float = 3.0, ping_timeout: float = 4.0
    ) -> None:
        self.engine = engine
        # Reads are single statements (each one consistent by itself): no BEGIN/COMMIT round trips.
        self.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        # The pool's own queue lets a newly arrived request take a connection that was just handed
        # to a waiter, so under load some requests wait far longer than others. A FIFO semaphore in
        # front of it (asyncio's does not let newcomers jump the queue) serves requests in order.
        self._slots = asyncio.Semaphore(connections)
        self.wait_timeout = wait_timeout
        self.ping_timeout = ping_timeout

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction: commits when the block ends, rolls back if it raised."""
        async with self._turn(), self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads, each statement committed on its own."""
        async with self._turn(), self.read_engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._slots.locked():
            # Waiting longer than a connect would take means the database is not keeping up: 503.
            async with asyncio.timeout(self.wait_timeout):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    async def ping(self) -> None:
        """Raise if the database cannot answer `SELECT 1` in time."""
        async with asyncio.timeout(self.ping_timeout):
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

    async def report_unavailable(self) -> None:
        """Log one line naming the cause if the database cannot be used right now (run at startup).

        The app keeps running either way: requests get 503 until the database answers, as after any
        outage, so a wrong certificate or password shows up here rather than as a crash loop.
        """
        try:
            await self.ping()
        except Exception as exc:
            cause = connection_failure(exc) or f"it cannot be used ({type(exc).__name__})"
            logger.warning("database unavailable at startup: %s; answering 503 until it is reachable", cause)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def get_database(request: Request) -> Database:
    """The app's Database, created in the lifespan."""
    database: Database = request.app.state.database
    return database


# Handlers open what they need with `async with db.transaction()` (writes: one unit of work that
# commits before the response is sent, or rolls back if the block raised) or `db.reader()`. A plain
# dependency rather than a yield dependency: FastAPI's generator machinery cost ~15% of a request.
Db = Annotated[Database, Depends(get_database)]
