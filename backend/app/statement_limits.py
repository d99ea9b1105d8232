"""A time limit on every database statement, and stopping a statement whose request was abandoned.

- PostgreSQL, direct connection: `SET statement_timeout` once when the pool opens the connection
  (no cost per request). Behind a transaction-mode pooler (PgBouncer, Neon's `-pooler` hosts) a
  session setting would land on whichever server connection ran it, so there every request runs in
  a transaction that begins with `SET LOCAL statement_timeout` (app.database does that).
  A statement over the limit fails with SQLSTATE 57014 (query_canceled). Cancelling the asyncio
  task of a request makes asyncpg send PostgreSQL a cancel request, so the statement stops too.
- SQLite: a progress handler checks, every few thousand virtual machine steps, whether the current
  statement is past its deadline or its request was cancelled, and interrupts it.

Either way the request gets `QueryTimeout` (422, app.errors): the query is too expensive as asked,
which a retry would not change (unlike 503).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_

# SQLite calls the progress handler every this many virtual machine instructions. Few, because one
# instruction can be long (a LIKE over a 10,000-character text is one); a call costs ~0.1 µs.
_SQLITE_PROGRESS_STEPS = 50
_QUERY_CANCELED = "57014"


class _Deadline:
    """The deadline of the statement running on one SQLite connection, and whether to stop now."""

    __slots__ = ("at", "cancelled", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = float("inf")
        self.cancelled = False

    def start(self) -> None:
        self.at = time.monotonic() + self.seconds
        self.cancelled = False

    def exceeded(self) -> int:
        # Runs on aiosqlite's thread; a non-zero answer makes SQLite interrupt the statement.
        return int(self.cancelled or time.monotonic() > self.at)


def install(engine: AsyncEngine, timeout_ms: int, *, session_setting: bool) -> None:
    """Limit every statement on `engine` to `timeout_ms`.

    `session_setting` is False behind a transaction-mode pooler, where the limit is set per
    transaction instead (see `local_setting`).
    """
    sync_engine = engine.sync_engine
    if sync_engine.dialect.name == "sqlite":
        event.listen(sync_engine, "connect", _sqlite_connect(timeout_ms / 1000))
        event.listen(sync_engine, "before_cursor_execute", _sqlite_before_execute)
        event.listen(sync_engine, "handle_error", _sqlite_on_error)
    elif session_setting:
        event.listen(sync_engine, "connect", _postgres_connect(timeout_ms))


def local_setting(timeout_ms: int) -> str:
    """The statement that sets the limit for one transaction (through a transaction-mode pooler)."""
    return f"SET LOCAL statement_timeout = {int(timeout_ms)}"


def _postgres_connect(timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _: Any) -> None:
        # On asyncpg itself: through the DBAPI adapter the SET would run in a transaction that the
        # pool rolls back, undoing it.
        await_(dbapi_connection.driver_connection.execute(f"SET statement_timeout = {int(timeout_ms)}"))

    return on_connect


def _sqlite_connect(seconds: float) -> Any:
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        deadline = _Deadline(seconds)
        connection_record.info["deadline"] = deadline
        await_(dbapi_connection.driver_connection.set_progress_handler(deadline.exceeded, _SQLITE_PROGRESS_STEPS))

    return on_connect


# The deadline of the SQLite statement each task is running, for `_sqlite_on_error`.
_RUNNING: weakref.WeakKeyDictionary[asyncio.Task[Any], _Deadline] = weakref.WeakKeyDictionary()


def _sqlite_before_execute(conn: Connection, *_: Any) -> None:
    deadline: _Deadline | None = conn.info.get("deadline")
    if deadline is not None:
        deadline.start()
        task = asyncio.current_task()
        if task is not None:
            _RUNNING[task] = deadline


def _sqlite_on_error(context: ExceptionContext) -> None:
    # The task awaiting the statement was cancelled (its client went away), and SQLAlchemy is about
    # to close the connection, which on aiosqlite would wait for the statement to finish: stop it
    # first. (On PostgreSQL asyncpg itself sends the server a cancel request.)
    if isinstance(context.original_exception, asyncio.CancelledError):
        task = asyncio.current_task()
        deadline = _RUNNING.pop(task, None) if task is not None else None
        if deadline is not None:
            deadline.cancelled = True


def is_statement_timeout(exc: BaseException) -> bool:
    """True when `exc` says a statement ran out of time (not that the database is unreachable)."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) == _QUERY_CANCELED:
        return True
    # SQLite's answer to the progress handler.
    return isinstance(exc, sa_exc.OperationalError) and "interrupted" in str(exc.orig)
