"""The database: the engine for DATABASE_URL (translated by app.dburl), and the connections handlers
open for reads, for one single-statement write, or for one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar, Token
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import TextClause, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app import statement_limits
from app.dburl import connection_failure, engine_spec
from app.errors import Problem, QueryTimeout, TooManyRequests

logger = logging.getLogger("app.database")

# Autocommit connections (PostgreSQL, direct) stay open between requests: checking one out of
# SQLAlchemy's pool and back in costs a short read more CPU than its statement. One idle for longer
# than KEEP_IDLE_SECONDS, or checked out longer than KEEP_MAX_SECONDS ago, goes back through the
# pool instead, so its recycling (pool_recycle, Neon's idle suspend) still applies.
KEEP_IDLE_SECONDS = 10.0
KEEP_MAX_SECONDS = 60.0

# What to run once the transaction that Database.transaction (or .writer) opened in this task has committed.
_after_commit: ContextVar[list[Callable[[], None]] | None] = ContextVar("after_commit", default=None)


def after_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once the current `Database.transaction` has committed (the block of a
    `Database.writer` has ended without error); never if it rolls back (or raised).

    Outside such a transaction the callback is dropped: what it does must be an optimisation only
    (the change feed's in-process announcement is; LISTEN/NOTIFY and polling do not depend on it).
    """
    callbacks = _after_commit.get()
    if callbacks is not None:
        callbacks.append(callback)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets readers run beside the writer; busy_timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=5000", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def create_engine(
    raw_url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 0,
    connect_timeout: float = 3.0,
    statement_timeout_ms: int | None = None,
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
    if statement_timeout_ms is not None:
        statement_limits.install(engine, statement_timeout_ms, session_setting=not spec.behind_pooler)
    return engine


class Database:
    """The engine of one app instance: transactional and read-only connections, handed out fairly.

    Every request holds one of `connections` slots while it uses the database, and one owner holds
    at most `per_owner` of them at once: a client that floods the API waits in its own queue (then
    gets 429) while everyone else keeps being served.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        connections: int = 10,
        per_owner: int = 4,
        wait_timeout: float = 3.0,
        ping_timeout: float = 4.0,
        local_timeout_ms: int | None = None,
    ) -> None:
        self.engine = engine
        # Reads are single statements (each one consistent by itself): no BEGIN/COMMIT round trips.
        self.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Single-statement writes too, where a statement's time limit needs no transaction.
        self._autocommit_writes = engine.dialect.name == "postgresql" and local_timeout_ms is None
        # The pool's own queue lets a newly arrived request take a connection that was just handed
        # to a waiter, so under load some requests wait far longer than others. A FIFO semaphore in
        # front of it (asyncio's does not let newcomers jump the queue) serves requests in order.
        self._slots = asyncio.Semaphore(connections)
        # For the metrics (app/metrics.py): slots in all, held by requests, and awaited right now.
        self.capacity = connections
        self.in_use = 0
        self.waiting = 0
        self._per_owner = min(per_owner, connections)
        self._owners: dict[str, _OwnerSlots] = {}
        self.wait_timeout = wait_timeout
        self.ping_timeout = ping_timeout
        # Open autocommit connections between requests, most recently used last: (connection,
        # checked out at, idle since). Kept + in use never exceeds the slots (see _Use).
        self._kept: list[tuple[AsyncConnection, float, float]] = []
        # When the pool last invalidated a connection (a restart, a network cut): a kept connection
        # older than that is given back (the pool then replaces every connection older than the
        # failure), as a pooled one would be, instead of failing a request of its own.
        self._invalidated_at = 0.0
        event.listen(engine.sync_engine, "invalidate", self._on_invalidate)
        # Behind a transaction-mode pooler the statement time limit is set per transaction.
        self._set_local_timeout = (
            None if local_timeout_ms is None else text(statement_limits.local_setting(local_timeout_ms))
        )

    def transaction(self, owner: str) -> _Use:
        """A connection in a transaction for `owner`'s request (`async with`): commits when the block
        ends, rolls back if it raised.
        """
        return _Use(self, owner, self.engine.begin, self._set_local_timeout, transactional=True)

    def writer(self, owner: str) -> _Use:
        """A connection for one write of `owner` made by a single statement (`async with`).

        On PostgreSQL with a direct connection the statement commits by itself (autocommit): one
        round trip, no BEGIN/COMMIT; a write that needs more statements opens its own transaction
        (app.services.changes.stamped does, for a due purge). `after_commit` callbacks run once the
        block has ended without error. Elsewhere this is `transaction`: SQLite's transaction costs
        no round trip, and behind a transaction-mode pooler the statement time limit is a SET LOCAL,
        which needs a transaction (correctness first: BEGIN, SET LOCAL, the statement, COMMIT).
        """
        if not self._autocommit_writes:
            return self.transaction(owner)
        return _Use(self, owner, None, None, transactional=True)

    def reader(self, owner: str) -> _Use:
        """A connection for `owner`'s reads (`async with`), each statement committed on its own.

        Behind a pooler reads run in a transaction too: SET LOCAL needs one.
        """
        if self._set_local_timeout is not None:
            return self.transaction(owner)
        if self._autocommit_writes:
            return _Use(self, owner, None, None, transactional=False)
        return _Use(self, owner, self.read_engine.connect, None, transactional=False)

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
        await self._release_kept()
        await self.engine.dispose()

    def _on_invalidate(self, *_: Any) -> None:
        self._invalidated_at = time.monotonic()

    async def _take_kept(self) -> tuple[AsyncConnection, float]:
        """An open autocommit connection and when it was checked out: a kept one, else from the pool."""
        now = time.monotonic()
        while self._kept:
            connection, opened_at, idle_since = self._kept.pop()
            if not _alive(connection):
                # The server closed it while it was kept (a restart): replaced as the pool replaces
                # a connection that fails, together with every connection older than the failure.
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await connection.invalidate()
                await _close_quietly(connection)
                continue
            if (
                now - idle_since <= KEEP_IDLE_SECONDS
                and now - opened_at <= KEEP_MAX_SECONDS
                and opened_at > self._invalidated_at
            ):
                return connection, opened_at
            await _close_quietly(connection)
        return await self.read_engine.connect().start(), now

    def _keep(self, connection: AsyncConnection, opened_at: float) -> None:
        self._kept.append((connection, opened_at, time.monotonic()))

    async def _release_kept(self, limit: int | None = None) -> None:
        """Give kept connections back to the pool (the oldest first; all when `limit` is None)."""
        count = len(self._kept) if limit is None else min(limit, len(self._kept))
        released, self._kept = self._kept[:count], self._kept[count:]
        for connection, _, _ in released:
            await _close_quietly(connection)


class _OwnerSlots:
    """One owner's share of the slots, kept while any of their requests holds or awaits one."""

    __slots__ = ("semaphore", "users")

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.users = 0


async def _acquire(semaphore: asyncio.Semaphore, wait_timeout: float) -> None:
    if semaphore.locked():
        async with asyncio.timeout(wait_timeout):
            await semaphore.acquire()
    else:
        await semaphore.acquire()


class _Use:
    """One request's use of a connection: the owner's slot, then a shared slot, then the connection.

    On the way out: a statement over its time limit becomes QueryTimeout (422), the statement of a
    request cancelled because its client went away is stopped, and the slots are given back. A
    class rather than a generator-based context manager: this runs on every request.
    """

    __slots__ = (
        "_after_commit",
        "_after_commit_token",
        "_connection",
        "_context",
        "_db",
        "_open",
        "_opened_at",
        "_owner",
        "_owner_slots",
        "_set_local",
    )

    def __init__(
        self,
        db: Database,
        owner: str,
        # None: an autocommit connection kept open between requests (Database._take_kept).
        open_connection: Callable[[], AbstractAsyncContextManager[AsyncConnection]] | None,
        set_local: TextClause | None,
        *,
        transactional: bool,
    ) -> None:
        self._db = db
        self._owner = owner
        self._open = open_connection
        self._set_local = set_local
        # A transaction (or an autocommit write) collects what to run once it has committed (`after_commit`).
        self._after_commit: list[Callable[[], None]] | None = [] if transactional else None
        self._after_commit_token: Token[list[Callable[[], None]] | None] | None = None

    async def __aenter__(self) -> AsyncConnection:
        db, owner = self._db, self._owner
        slots = db._owners.get(owner)
        if slots is None:
            slots = db._owners[owner] = _OwnerSlots(db._per_owner)
        slots.users += 1
        self._owner_slots = slots
        try:
            try:
                await _acquire(slots.semaphore, db.wait_timeout)
            except TimeoutError:
                raise TooManyRequests("Too many of your requests are in progress at once; retry shortly.") from None
            try:
                # Waiting longer than a connect would take means the database is not keeping up: 503.
                db.waiting += 1  # the pool gauges of app.metrics
                try:
                    await _acquire(db._slots, db.wait_timeout)
                finally:
                    db.waiting -= 1
                db.in_use += 1
                try:
                    if self._open is None:
                        self._connection, self._opened_at = await db._take_kept()
                        return self._set_after_commit()
                    if db._kept:
                        # This one is not kept: one kept connection goes back to the pool first, so
                        # kept + in use stays within the slots and the pool never runs dry.
                        await db._release_kept(1)
                    self._context = self._open()
                    self._connection = await self._context.__aenter__()
                    if self._set_local is not None:
                        try:
                            await self._connection.execute(self._set_local)
                        except BaseException as exc:
                            await self._context.__aexit__(type(exc), exc, exc.__traceback__)
                            raise
                    return self._set_after_commit()
                except BaseException:
                    db.in_use -= 1
                    db._slots.release()
                    raise
            except BaseException:
                slots.semaphore.release()
                raise
        except BaseException:
            self._leave()
            raise

    def _set_after_commit(self) -> AsyncConnection:
        if self._after_commit is not None:
            self._after_commit_token = _after_commit.set(self._after_commit)
        return self._connection

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            try:
                if self._open is None:
                    await self._put_back(exc)
                else:
                    await self._context.__aexit__(exc_type, exc, traceback)
            except SQLAlchemyError as cleanup:
                raise _translated(cleanup) from None
            if isinstance(exc, SQLAlchemyError):
                translated = _translated(exc)
                if translated is not exc:
                    raise translated from None
            if exc is None and self._after_commit:
                _run_after_commit(self._after_commit)
        finally:
            if self._after_commit_token is not None:
                _after_commit.reset(self._after_commit_token)
            self._db.in_use -= 1
            self._db._slots.release()
            self._owner_slots.semaphore.release()
            self._leave()

    async def _put_back(self, exc: BaseException | None) -> None:
        """Keep the connection open for the next request if it is as it was handed out, else close it."""
        connection = self._connection
        if (exc is None or isinstance(exc, Problem)) and autocommit(connection) and not connection.invalidated:
            self._db._keep(connection, self._opened_at)
            return
        if exc is not None and not isinstance(exc, Problem):
            # A database error or a cancelled statement: the others may share the cause (a restart),
            # so they go back to the pool too, which replaces connections older than a failure.
            await self._db._release_kept()
        await connection.close()

    def _leave(self) -> None:
        slots = self._owner_slots
        slots.users -= 1
        if slots.users == 0:
            del self._db._owners[self._owner]


def autocommit(connection: AsyncConnection) -> bool:
    """Whether `connection` commits each statement by itself (a writer's connection that purged
    tombstones has switched to a transaction: app.services.changes.stamped).
    """
    options = connection.sync_connection.get_execution_options() if connection.sync_connection else {}
    return bool(options.get("isolation_level") == "AUTOCOMMIT")


def _alive(connection: AsyncConnection) -> bool:
    # asyncpg learns of a closed socket while the connection is idle (is_closed), at no cost.
    try:
        driver = connection.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    except SQLAlchemyError:
        return False
    is_closed = getattr(driver, "is_closed", None)
    return not (is_closed is not None and is_closed())


async def _close_quietly(connection: AsyncConnection) -> None:
    # Back to the pool; a connection that died while kept is the pool's to replace.
    with contextlib.suppress(SQLAlchemyError, OSError):
        await connection.close()


def _run_after_commit(callbacks: list[Callable[[], None]]) -> None:
    # Committed. The answer must not depend on these: a failing one is logged, never raised.
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:
            logger.error("after-commit callback failed: %s", type(exc).__name__, exc_info=exc)


def _translated(error: SQLAlchemyError) -> BaseException:
    """What a database error during a request means for the client."""
    if statement_limits.is_statement_timeout(error):
        return QueryTimeout()
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        # The statement was interrupted because the request was cancelled (its client went away):
        # the cancellation is what happened, not the driver's complaint about it.
        return asyncio.CancelledError()
    return error


async def get_database(request: Request) -> Database:
    """The app's Database, created in the lifespan."""
    database: Database = request.app.state.database
    return database


# Handlers open what they need with `async with db.transaction(owner)` (writes: one unit of work that
# commits before the response is sent, or rolls back if the block raised), `db.writer(owner)` (a write
# of one statement) or `db.reader(owner)`. A plain
# dependency rather than a yield dependency: FastAPI's generator machinery cost ~15% of a request.
Db = Annotated[Database, Depends(get_database)]
