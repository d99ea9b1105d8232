"""The database: URL translation per kind (SQLite, PostgreSQL, Neon/PgBouncer), the engine, and the
connections handlers open for reads or for one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app import statement_limits
from app.errors import QueryTimeout, TooManyRequests

# libpq URL parameters we translate for asyncpg (which rejects them as connect arguments).
_TLS_PARAMS = ("sslmode", "sslrootcert", "channel_binding")
# libpq parameters that have no asyncpg equivalent and are safe to drop.
_DROPPED_PARAMS = ("target_session_attrs", "gssencmode")
PGBOUNCER_PORT = 6432


class DatabaseURLError(ValueError):
    """DATABASE_URL cannot be used; the message never contains the URL itself."""


@dataclass(frozen=True)
class EngineSpec:
    """What `create_async_engine` needs for one DATABASE_URL."""

    url: URL
    connect_args: dict[str, Any] = field(default_factory=dict)
    is_sqlite: bool = False
    behind_pooler: bool = False


def _tls_context(mode: str, root_cert: str | None) -> ssl.SSLContext | bool | str:
    if mode == "disable":
        return False
    if mode in ("allow", "prefer"):
        return "prefer"
    if mode not in ("require", "verify-ca", "verify-full"):
        raise DatabaseURLError(f"sslmode={mode!r} is not a known sslmode")
    # `require` verifies the certificate too (stricter than libpq): Neon's certificates are publicly
    # trusted, and an unverified TLS connection gives no protection against a man in the middle.
    cafile = None if root_cert in (None, "system") else root_cert
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, TypeError, ValueError):  # missing or unreadable file, or a repeated parameter
        raise DatabaseURLError("sslrootcert cannot be read as a CA certificate file") from None
    if mode == "verify-ca":
        context.check_hostname = False
    return context


def engine_spec(raw_url: str, *, connect_timeout: float) -> EngineSpec:
    """Translate a URL as users paste it (sqlite:///x.db, postgres://..., Neon's) for the async drivers."""
    try:
        url = make_url(raw_url)
    except Exception:
        raise DatabaseURLError("not a valid URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return EngineSpec(url=url.set(drivername="sqlite+aiosqlite"), is_sqlite=True, connect_args={"timeout": 5})
    if backend not in ("postgres", "postgresql"):
        raise DatabaseURLError(f"scheme {backend!r} is not supported (use sqlite or postgresql)")

    query = dict(url.query)
    params = {key: query.pop(key) for key in _TLS_PARAMS if key in query}
    for key in _DROPPED_PARAMS:
        query.pop(key, None)
    # Neon adds `options=endpoint%3D<id>` for clients without SNI; asyncpg sends SNI, so that one is
    # safe to drop. Other options (statement_timeout, search_path…) would change behaviour: refuse.
    options = query.pop("options", None)
    if options is not None and not re.fullmatch(r"endpoint=[A-Za-z0-9-]+", str(options)):
        raise DatabaseURLError("the `options` parameter is not supported (other than Neon's endpoint=…)")
    pgbouncer = str(query.pop("pgbouncer", "")).lower() in ("1", "true")
    try:
        timeout = float(str(query.pop("connect_timeout", connect_timeout)))
    except ValueError:
        raise DatabaseURLError("connect_timeout must be a number of seconds") from None
    if query:
        raise DatabaseURLError(f"unsupported parameters: {', '.join(sorted(query))}")

    connect_args: dict[str, Any] = {"timeout": timeout, "command_timeout": 30}
    if "sslmode" in params:
        connect_args["ssl"] = _tls_context(str(params["sslmode"]), params.get("sslrootcert"))  # type: ignore[arg-type]
    # channel_binding: asyncpg cannot do SCRAM-PLUS; the verified TLS certificate already
    # authenticates the server, which is what channel binding protects.

    # Neon's pooled hosts end in "-pooler"; 6432 is PgBouncer's default port; `pgbouncer=true`
    # says so explicitly for any other pooler.
    behind_pooler = pgbouncer or "-pooler" in (url.host or "") or url.port == PGBOUNCER_PORT
    if behind_pooler:
        # PgBouncer in transaction mode hands each transaction a different server connection, so a
        # named prepared statement cached on one is missing on the next. Without caches asyncpg uses
        # unnamed statements, which live only within the transaction and leave nothing behind.
        connect_args["statement_cache_size"] = 0
    return EngineSpec(
        url=url.set(drivername="postgresql+asyncpg", query={}),
        connect_args=connect_args,
        behind_pooler=behind_pooler,
    )


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
        # The pool's own queue lets a newly arrived request take a connection that was just handed
        # to a waiter, so under load some requests wait far longer than others. A FIFO semaphore in
        # front of it (asyncio's does not let newcomers jump the queue) serves requests in order.
        self._slots = asyncio.Semaphore(connections)
        self._per_owner = min(per_owner, connections)
        self._owners: dict[str, _OwnerSlots] = {}
        self.wait_timeout = wait_timeout
        self.ping_timeout = ping_timeout
        # Behind a transaction-mode pooler the statement time limit is set per transaction.
        self._set_local_timeout = (
            None if local_timeout_ms is None else text(statement_limits.local_setting(local_timeout_ms))
        )

    @asynccontextmanager
    async def transaction(self, owner: str) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction for `owner`'s request: commits when the block ends, rolls
        back if it raised.
        """
        async with self._turn(owner), _limited(self.engine.begin()) as connection:
            if self._set_local_timeout is not None:
                await connection.execute(self._set_local_timeout)
            yield connection

    @asynccontextmanager
    async def reader(self, owner: str) -> AsyncIterator[AsyncConnection]:
        """A connection for `owner`'s reads, each statement committed on its own."""
        if self._set_local_timeout is not None:
            # SET LOCAL needs a transaction: through a pooler reads run in one too.
            async with self.transaction(owner) as connection:
                yield connection
            return
        async with self._turn(owner), _limited(self.read_engine.connect()) as connection:
            yield connection

    @asynccontextmanager
    async def _turn(self, owner: str) -> AsyncIterator[None]:
        slots = self._owners.get(owner)
        if slots is None:
            slots = self._owners[owner] = _OwnerSlots(self._per_owner)
        slots.users += 1
        try:
            try:
                await _acquire(slots.semaphore, self.wait_timeout)
            except TimeoutError:
                raise TooManyRequests("Too many of your requests are in progress at once; retry shortly.") from None
            try:
                # Waiting longer than a connect would take means the database is not keeping up: 503.
                await _acquire(self._slots, self.wait_timeout)
                try:
                    yield
                finally:
                    self._slots.release()
            finally:
                slots.semaphore.release()
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._owners[owner]

    async def ping(self) -> None:
        """Raise if the database cannot answer `SELECT 1` in time."""
        async with asyncio.timeout(self.ping_timeout):
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


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


@asynccontextmanager
async def _limited(opening: AbstractAsyncContextManager[AsyncConnection]) -> AsyncIterator[AsyncConnection]:
    """The connection `opening` gives, with a statement over its time limit turned into QueryTimeout,
    and the statement of a request that was cancelled (its client went away) stopped.
    """
    try:
        async with opening as connection:
            try:
                yield connection
            except asyncio.CancelledError:
                statement_limits.stop_statement(connection)
                raise
    except DBAPIError as exc:
        if statement_limits.is_statement_timeout(exc):
            raise QueryTimeout() from None
        raise
    except SQLAlchemyError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cleaning up after the interrupted statement failed; the cancellation is what happened.
            raise asyncio.CancelledError from None
        raise


async def get_database(request: Request) -> Database:
    """The app's Database, created in the lifespan."""
    database: Database = request.app.state.database
    return database


# Handlers open what they need with `async with db.transaction(owner)` (writes: one unit of work that
# commits before the response is sent, or rolls back if the block raised) or `db.reader(owner)`. A plain
# dependency rather than a yield dependency: FastAPI's generator machinery cost ~15% of a request.
Db = Annotated[Database, Depends(get_database)]
