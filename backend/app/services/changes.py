"""The change feed: every write of a task gets the next number of its owner's change sequence, and a
client asks for what changed after the number it has seen (its cursor).

**How no change is ever skipped.** A number taken inside a transaction becomes visible when that
transaction commits, and transactions commit in any order: with a plain sequence, a reader could see
change 11 committed, hand out a cursor past it, and never see change 10, committed a moment later.
Here each owner has one row in `change_counters`, and every write of that owner's tasks begins by
incrementing it (`stamp`) in the writing transaction itself. The row lock that increment takes is
held until commit, so a second writer of the same owner waits at its increment until the first has
committed (READ COMMITTED then re-reads the row and takes the next number). One owner's numbers are
therefore committed in order: once a reader sees the counter at N, every change numbered up to N is
committed and visible to it. The feed reads the counter, the changed tasks and the tombstones in one
statement (one snapshot), so a cursor never passes a change that the same read did not return.

On PostgreSQL the increment and the write are usually one statement on an autocommit connection
(`stamp_cte`, "writing in one statement" below): the statement is its own transaction, so the same
holds, with the lock taken by the statement's first step and held until it commits.

This holds on PostgreSQL (READ COMMITTED, any number of API processes, through a transaction-mode
pooler: the lock lives in the transaction, not the session) and on SQLite (one writer at a time,
holding the database's write lock from its first write until it commits). Its price: one owner's
writes are serialised (each waits for the previous one to commit, ~1 ms); different owners never
wait for each other. `SyncPolicy(ordered=False)` (SYNC_ORDERED_COMMITS=false) is the
textbook design without that lock: the number comes from a separate, immediately committed
transaction (as from a database sequence) and a cursor is the highest number a read returned. It
exists only so that tests/test_changes_race.py can show that design skipping changes. Never use it.

**Tombstones.** A delete leaves a tombstone (id, number, time) so feeds can report it. Tombstones
older than the retention (SYNC_TOMBSTONE_DAYS) are purged by the owner's next write once the oldest
is due (no cron, no extra statement on other writes); the counter row remembers the highest number
purged, and a cursor from before it is answered 410: the client may have missed a delete and must
start over. An owner who never writes again keeps their tombstones and their cursors stay valid.

**Cursors** are opaque to clients: a version, the number up to which the client has every change,
the number up to which it needs no tombstone (above the first while a snapshot is being paged), and
a checksum over them and the owner, so a garbled cursor, or someone else's, is a 422.

**Live events.** `stamp` (and `stamp_cte`) also announces the new number: on PostgreSQL with
`pg_notify` in the same statement (delivered to every listening API process when the transaction
commits; app/events.py), and within this process once the transaction has committed
(app.database.after_commit).
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    event,
    func,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import CTE, Executable

from app import cursors
from app.columns import UTCTimestamp
from app.database import after_commit, autocommit
from app.errors import CursorExpired, InvalidCursor
from app.models.changes import ChangeCounter, TaskTombstone
from app.models.task import TASK_FIELDS, Task, TaskRow
from app.schemas.changes import CURSOR_MAX_LENGTH, LIMIT_DEFAULT

# The PostgreSQL NOTIFY channel; the payload is "<number> <owner id>".
CHANNEL = "task_changes"
logger = logging.getLogger("app.changes")
DEFAULT_RETENTION = timedelta(days=30)

counters = ChangeCounter.__table__  # type: ignore[attr-defined]
tombstones = TaskTombstone.__table__  # type: ignore[attr-defined]
tasks = Task.__table__  # type: ignore[attr-defined]
_POLICY = "app.sync_policy"


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    """How one app's writes feed the change log: tombstone retention, ordering, in-process announcements."""

    retention: timedelta = DEFAULT_RETENTION
    # False only to demonstrate the race this module prevents (see the module docstring).
    ordered: bool = True
    # Called with (owner id, number) once a write has committed (app/events.py).
    announce: Callable[[str, int], None] | None = None


def install(engine: AsyncEngine, policy: SyncPolicy) -> None:
    """Make every connection of `engine` write changes according to `policy`."""

    def on_connect(_: Any, connection_record: Any) -> None:
        connection_record.info[_POLICY] = policy

    event.listen(engine.sync_engine, "connect", on_connect)


def _policy(conn: AsyncConnection) -> SyncPolicy:
    policy: SyncPolicy | None = conn.info.get(_POLICY)
    return policy or _DEFAULT_POLICY


_DEFAULT_POLICY = SyncPolicy()


# --- writing: the owner's next number ----------------------------------------------------------


@lru_cache(maxsize=4)
def _stamp_statement(dialect: str) -> Executable:
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(counters)
    stamp = insert.values(
        user_id=bindparam("owner_id"), seq=1, purged_seq=0, purge_due_at=bindparam("due", type_=UTCTimestamp())
    ).on_conflict_do_update(
        index_elements=[counters.c.user_id],
        set_={
            "seq": counters.c.seq + 1,
            # A delete makes a purge due once its tombstone passes the retention, unless one already is.
            "purge_due_at": func.coalesce(counters.c.purge_due_at, insert.excluded.purge_due_at),
        },
    )
    returned: list[ColumnElement[Any]] = [counters.c.seq, counters.c.purged_seq, counters.c.purge_due_at]
    if dialect == "postgresql":
        # Delivered to the listeners when (and only if) the transaction commits.
        returned.append(func.pg_notify(CHANNEL, func.concat(counters.c.seq, " ", counters.c.user_id)).label("n"))
    return cast(Executable, stamp.returning(*returned))


async def stamp(conn: AsyncConnection, owner_id: str, *, tombstone_at: datetime | None = None) -> int:
    """The owner's next change number, for a write in `conn`'s transaction. Call it before the write
    touches any task: the owner's row lock then orders the writers (module docstring), and always
    being taken first, it cannot deadlock with the tasks' row locks.

    `tombstone_at`: the write deletes a task at that time (a purge becomes due after the retention).
    Purges the owner's expired tombstones when they are due.
    """
    policy = _policy(conn)
    params = {"owner_id": owner_id, "due": None if tombstone_at is None else tombstone_at + policy.retention}
    statement = _stamp_statement(conn.dialect.name)
    if policy.ordered:
        row = (await conn.execute(statement, params)).one()
    else:
        # The demonstration of the race (module docstring): numbered outside the writing transaction.
        async with conn.engine.begin() as separate:
            row = (await separate.execute(statement, params)).one()
    if policy.ordered and row.purge_due_at is not None and row.purge_due_at <= _now():
        await _purge(conn, owner_id, policy.retention)
    if policy.announce is not None:
        announce, seq = policy.announce, row.seq
        after_commit(lambda: announce(owner_id, seq))
    return int(row.seq)


# --- writing in one statement (PostgreSQL) -----------------------------------------------------
#
# On PostgreSQL a write and its stamp are one statement: the stamp is a data-modifying CTE
# (`stamp_cte`) and the write takes its number with `(SELECT seq FROM stamp)`. Sent on an
# autocommit connection (app.database.Database.writer) that is one round trip, no BEGIN/COMMIT.
#
# Lock order. The write must not lock a task row before the stamp holds the owner's counter row.
# It does not: a write statement gates its scan of `tasks` on `(SELECT seq FROM stamp) IS NOT
# NULL`, a condition with no column of the scanned row, which PostgreSQL plans as an InitPlan
# under a One-Time Filter (`Result` node above the scan): it is evaluated, running the CTE's
# upsert and so waiting for and taking the counter row's lock, before the scan reads its first
# row. A create's VALUES row computes the same subquery before its row is inserted. Everything
# the write causes later (row locks, the AFTER row triggers on `tasks`, a tombstone) therefore
# comes after the counter lock, as with `stamp` in a transaction.
#
# Misses. A data-modifying CTE runs whether or not the rest of the statement finds its row, so a
# write of one task (update, delete) stamps only `WHERE EXISTS` the target in the statement's
# snapshot (same owner, same id, an acceptable version): a 403/404/412 takes no number and
# notifies nobody. The check reads without locking. If the task changes between the statement's
# snapshot and the moment the counter lock is granted (a concurrent delete, or a concurrent
# update that moves its version past an If-Match), the number is taken but the write finds no
# row: a gap in the owner's sequence, numbered and committed in order like any change. A gap is
# harmless to the feed: it vouches for no task, a cursor moving past it misses nothing, and the
# NOTIFY it sends only makes listeners poll an empty page.


def one_statement(conn: AsyncConnection) -> bool:
    """True when writes on `conn` stamp with `stamp_cte` in their own statement (PostgreSQL, ordered)."""
    return conn.dialect.name == "postgresql" and _policy(conn).ordered


def stamp_cte(exists: ColumnElement[bool] | None = None) -> CTE:
    """The stamp as a data-modifying CTE named `stamp` (PostgreSQL): the owner's (`owner_id`) next
    number `seq`, the counter's `purge_due_at`, and the NOTIFY of the number. `due`: when the
    tombstone the write leaves becomes purgeable (None: it leaves none). `exists`: stamp only if
    this holds (the target task is there), so that a miss takes no number.
    """
    insert = postgresql.insert(counters)
    source = select(
        bindparam("owner_id", type_=counters.c.user_id.type),
        literal_column("1"),
        literal_column("0"),
        bindparam("due", type_=UTCTimestamp()),
    )
    if exists is not None:
        source = source.where(exists)
    upsert = insert.from_select(["user_id", "seq", "purged_seq", "purge_due_at"], source).on_conflict_do_update(
        index_elements=[counters.c.user_id],
        set_={
            "seq": counters.c.seq + 1,
            "purge_due_at": func.coalesce(counters.c.purge_due_at, insert.excluded.purge_due_at),
        },
    )
    # Delivered to the listeners when (and only if) the statement commits.
    notify = func.pg_notify(CHANNEL, func.concat(counters.c.seq, " ", counters.c.user_id)).label("n")
    return upsert.returning(counters.c.seq, counters.c.purge_due_at, notify).cte("stamp")


def tombstone_due(conn: AsyncConnection, deleted_at: datetime) -> datetime:
    """When a tombstone left at `deleted_at` becomes purgeable under `conn`'s policy."""
    return deleted_at + _policy(conn).retention


async def stamped(conn: AsyncConnection, owner_id: str, seq: int, purge_due_at: datetime | None) -> None:
    """What follows a write that `stamp_cte` numbered `seq`: purge the owner's expired tombstones
    if that is due (rare: in a transaction of its own on an autocommit connection), and announce the
    number in this process once the write has committed.
    """
    policy = _policy(conn)
    if purge_due_at is not None and purge_due_at <= _now():
        if autocommit(conn):
            try:
                await conn.commit()  # ends SQLAlchemy's bookkeeping transaction; nothing is sent
                await conn.execution_options(isolation_level="READ COMMITTED")
                async with conn.begin():
                    await _purge(conn, owner_id, policy.retention)
            except SQLAlchemyError as exc:
                # The write has committed: its answer must not turn into an error. The purge stays
                # due, and the owner's next write tries again.
                logger.warning("tombstone purge failed, retried on the next write: %s", type(exc).__name__)
        else:
            await _purge(conn, owner_id, policy.retention)
    if policy.announce is not None:
        announce = policy.announce
        after_commit(lambda: announce(owner_id, seq))


_PURGE = (
    delete(tombstones)
    .where(tombstones.c.user_id == bindparam("owner_id"), tombstones.c.deleted_at < bindparam("cutoff"))
    .returning(tombstones.c.seq)
)
_OLDEST = select(func.min(tombstones.c.deleted_at)).where(tombstones.c.user_id == bindparam("owner_id"))
_PURGED = (
    update(counters)
    .where(counters.c.user_id == bindparam("owner_id"))
    .values(purged_seq=bindparam("purged_seq"), purge_due_at=bindparam("due"))
)
# FOR UPDATE on PostgreSQL (SQLite: the transaction already holds the database's write lock).
_LOCK_COUNTER = (
    select(counters.c.purged_seq, counters.c.purge_due_at)
    .where(counters.c.user_id == bindparam("owner_id"))
    .with_for_update()
)


async def _purge(conn: AsyncConnection, owner_id: str, retention: timedelta) -> None:
    # Under the owner's row lock (held already after `stamp`, taken here after `stamp_cte` on an
    # autocommit connection): no other purge or write of this owner runs at the same time, and
    # each statement after the lock sees every tombstone committed before it.
    counter = (await conn.execute(_LOCK_COUNTER, {"owner_id": owner_id})).one()
    now = _now()
    if counter.purge_due_at is None or counter.purge_due_at > now:
        return  # someone else purged in between
    purged = (await conn.execute(_PURGE, {"owner_id": owner_id, "cutoff": now - retention})).scalars().all()
    oldest: datetime | None = (await conn.execute(_OLDEST, {"owner_id": owner_id})).scalar_one_or_none()
    await conn.execute(
        _PURGED,
        {
            "owner_id": owner_id,
            "purged_seq": max([counter.purged_seq, *purged]),
            "due": None if oldest is None else oldest + retention,
        },
    )


_INSERT_TOMBSTONE = tombstones.insert()


async def bury(conn: AsyncConnection, owner_id: str, task_id: uuid.UUID, seq: int, deleted_at: datetime) -> None:
    """Record that the owner's task was deleted (change `seq`, from `stamp`)."""
    await conn.execute(_INSERT_TOMBSTONE, {"id": task_id, "user_id": owner_id, "seq": seq, "deleted_at": deleted_at})


def _now() -> datetime:
    return datetime.now(UTC)


# --- cursors -----------------------------------------------------------------------------------

_CURSOR_VERSION = 1
_CURSOR = struct.Struct(">BQQ")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a client stands: it has every change up to `seq`, and needs no tombstone up to `base`."""

    seq: int
    base: int


_PERSON = b"taskapi-cursor"


def encode_cursor(owner_id: str, cursor: Cursor) -> str:
    """The opaque text of `cursor` for `owner_id`."""
    return cursors.seal(_CURSOR.pack(_CURSOR_VERSION, cursor.seq, cursor.base), owner_id.encode(), person=_PERSON)


def decode_cursor(owner_id: str, text: str) -> Cursor:
    """The cursor `text` stands for; InvalidCursor when it is not one issued to `owner_id`."""
    payload = cursors.unseal(text, owner_id.encode(), person=_PERSON, max_length=CURSOR_MAX_LENGTH)
    if payload is None or len(payload) != _CURSOR.size:
        raise InvalidCursor()
    version, seq, base = _CURSOR.unpack(payload)
    if version != _CURSOR_VERSION or base < seq:
        raise InvalidCursor()
    return Cursor(seq, base)


def cursor_at(owner_id: str, seq: int) -> str:
    """The cursor of a client that has every change of `owner_id` up to `seq`."""
    return encode_cursor(owner_id, Cursor(seq, seq))


# --- reading: the feed -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    """A task created or changed since the cursor, in its current state."""

    task: TaskRow
    version: int

    @property
    def etag(self) -> str:
        """The task's strong ETag, as the REST routes send it."""
        return f'"{self.version}"'


@dataclass(frozen=True, slots=True)
class Deletion:
    """A task deleted since the cursor."""

    id: uuid.UUID
    deleted_at: datetime


@dataclass(frozen=True, slots=True)
class ChangePage:
    """One page of the owner's changes, oldest first; `cursor` is where the next request starts."""

    changes: list[Upsert | Deletion]
    cursor: str
    has_more: bool


_NO_TOMBSTONES = 2**63 - 1
_OP = "op"
_AUX = "aux"  # the version of an upsert; the purged number on the counter's row


@lru_cache(maxsize=1)
def _feed_statement() -> Select[Any]:
    t, d, k = tasks.c, tombstones.c, counters.c
    owner: ColumnElement[str] = bindparam("owner_id")
    upserts = select(
        literal_column("'u'").label(_OP),
        t.seq,
        t.version.label(_AUX),
        *(t[name] for name in TASK_FIELDS),
        type_coerce(null(), UTCTimestamp()).label("deleted_at"),
    ).where(t.user_id == owner, t.seq > bindparam("after"))
    deletions = select(
        literal_column("'d'"),
        d.seq,
        null(),
        d.id,
        *(null() for _ in TASK_FIELDS[1:]),
        d.deleted_at,
    ).where(and_(d.user_id == owner, d.seq > bindparam("base")))
    page = union_all(upserts, deletions).order_by("seq").limit(bindparam("limit")).subquery("page")
    # The owner's counter rides along, so the page and the counter come from one snapshot.
    counter = select(literal_column("'s'"), k.seq, k.purged_seq, *(null() for _ in TASK_FIELDS), null()).where(
        k.user_id == owner
    )
    return cast(Select[Any], union_all(select(*page.c), counter))


async def list_changes(
    conn: AsyncConnection, owner_id: str, since: str | None, limit: int = LIMIT_DEFAULT
) -> ChangePage:
    """What changed in the owner's tasks after the cursor `since`, at most `limit` changes, oldest
    first, each task at most once and in its current state. Without `since`, a snapshot: every
    current task, as upserts, paged like any other answer.

    Raises InvalidCursor (not a cursor issued to this owner) and CursorExpired (tombstones it would
    need were purged, or the database no longer has what it counted).
    """
    # A snapshot needs no tombstone of what was deleted before it began: none at all in its first page.
    cursor = Cursor(0, _NO_TOMBSTONES) if since is None else decode_cursor(owner_id, since)
    params = {"owner_id": owner_id, "after": cursor.seq, "base": cursor.base, "limit": limit + 1}
    rows = (await conn.execute(_feed_statement(), params)).all()
    head, purged = 0, 0
    changes: list[tuple[int, Upsert | Deletion]] = []
    for row in rows:
        values = row._mapping
        op, seq, aux = values[_OP], values["seq"], values[_AUX]
        if op == "s":
            head, purged = seq, aux
        elif op == "u":
            task = {name: values[name] for name in TASK_FIELDS}
            changes.append((seq, Upsert(cast(TaskRow, task), aux)))
        else:
            changes.append((seq, Deletion(values["id"], values["deleted_at"])))
    if since is None:
        # Its next pages need the tombstones of deletes after this read.
        cursor = Cursor(0, head)
    elif cursor.base < purged or cursor.base > head:
        raise CursorExpired()
    changes.sort(key=lambda change: change[0])
    has_more = len(changes) > limit
    del changes[limit:]
    # All of the owner's changes up to `head` are committed and were visible to this read ...
    seq = head
    if has_more or not _policy(conn).ordered:
        # ... but the page holds only some of them (or, unordered, nothing vouches for `head`).
        seq = changes[-1][0] if changes else cursor.seq
    after = Cursor(seq, max(cursor.base, seq))
    return ChangePage([change for _, change in changes], encode_cursor(owner_id, after), has_more)


_HEADS = select(counters.c.user_id, counters.c.seq).where(counters.c.user_id.in_(bindparam("owners", expanding=True)))


async def heads(conn: AsyncConnection, owner_ids: Iterable[str]) -> dict[str, int]:
    """The latest change number of each owner (0 for an owner who never wrote)."""
    owners = list(owner_ids)
    found: dict[str, int] = {owner: 0 for owner in owners}
    if owners:
        found.update({row.user_id: row.seq for row in await conn.execute(_HEADS, {"owners": owners})})
    return found
