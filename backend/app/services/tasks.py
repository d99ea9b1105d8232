"""Every task query. Each function takes the owner's id as a required argument and scopes by it,
so no handler can forget isolation, and returns typed results (never HTTP bodies) that REST, agent
tools and the change feed all present in their own way.

Statements are SQLAlchemy Core, built once per shape, on a plain connection; rows become plain
dicts of the public fields (no ORM instances, no second validation of our own data on the hot
path). Conditional writes check the version inside the UPDATE/DELETE statement itself, so
concurrent writers holding the same ETag cannot both win.

Every write first takes the owner's next change number (`changes.stamp`, whose row lock orders the
owner's writers) and stamps it on the task, or on the tombstone a delete leaves: the change feed
(app/services/changes.py) is written here, by the functions REST and the agent tools both call.
On PostgreSQL the stamp and the write are one statement (`changes.stamp_cte`): a create, an update
or a delete is then one round trip on an autocommit connection (app.database.Database.writer).
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Row,
    Select,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import CTE, Executable, Label, ScalarSelect

from app import cursors
from app.errors import Forbidden, InvalidCursor, NotFound, PreconditionFailed
from app.models.counts import TaskCount
from app.models.task import TASK_FIELDS, Task, TaskPriority, TaskRow
from app.schemas.task import (
    PAGE_CURSOR_MAX_LENGTH,
    TaskCreate,
    TaskListQuery,
    TaskRead,
    TaskSort,
    render_task,
)
from app.services import changes as change_log
from app.services import idempotency

tasks = Task.__table__  # type: ignore[attr-defined]
counts = TaskCount.__table__  # type: ignore[attr-defined]
c = tasks.c
_TASK_COLUMNS = tuple(c[name] for name in TASK_FIELDS)
_READ_COLUMNS = (*_TASK_COLUMNS, c.version)


@dataclass(frozen=True, slots=True)
class VersionedTask:
    """A task as stored, with its version (the ETag)."""

    task: TaskRow
    version: int

    @property
    def id(self) -> uuid.UUID:
        """The task's id."""
        return self.task["id"]

    @property
    def etag(self) -> str:
        """The strong ETag of this version."""
        return f'"{self.version}"'


@dataclass(frozen=True, slots=True)
class Created:
    """A created task; `replayed` when an Idempotency-Key returned the task its first use created."""

    task: VersionedTask
    replayed: bool


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of the owner's matching tasks; `total` counts every match."""

    items: list[TaskRow]
    total: int
    limit: int
    offset: int
    # Where the next page starts (None: this is the last page).
    next_cursor: str | None


# Every statement here returns the public fields first, in TASK_FIELDS order, then the version (or
# the page's total). Zipping the row is a fraction of the cost of Row._asdict() on the hot path.
_VERSION = len(TASK_FIELDS)


def _versioned(row: Row[Any]) -> VersionedTask:
    return VersionedTask(cast(TaskRow, dict(zip(TASK_FIELDS, row[:_VERSION], strict=True))), row[_VERSION])


def _page_item(row: Row[Any]) -> TaskRow:
    return cast(TaskRow, dict(zip(TASK_FIELDS, row[:_VERSION], strict=True)))


def _now() -> datetime:
    return datetime.now(UTC)


_PRIORITY_RANK = case({p.value: rank for rank, p in enumerate(TaskPriority)}, value=c.priority)
_SORT_KEYS: dict[str, ColumnElement[Any]] = {
    "created_at": c.created_at,
    "updated_at": c.updated_at,
    "due_date": c.due_date,
    "priority": _PRIORITY_RANK,
    "title": c.title,
}


# Statements are built once per shape and reused with bound values: building and cache-keying a
# SQLAlchemy statement costs more CPU than running it.
_SCOPE = (c.id == bindparam("task_id"), c.user_id == bindparam("owner_id"))
_INSERT = insert(tasks).returning(*_READ_COLUMNS)
_GET = select(*_READ_COLUMNS).where(*_SCOPE)
_OWNER = select(c.user_id).where(c.id == bindparam("task_id"))
_VERSION_IN = c.version.in_(bindparam("versions", expanding=True))


async def create_task(
    conn: AsyncConnection, owner_id: str, data: TaskCreate, idempotency_key: str | None = None
) -> Created:
    """Insert a new task owned by `owner_id`.

    With an `idempotency_key` (run inside a transaction), a retry with the same key and body returns
    the task the first request created instead of creating another; a different body is a 422.
    """
    if idempotency_key is not None:
        fingerprint = idempotency.fingerprint(data.model_dump(mode="json"))
        stored = await idempotency.claim(conn, owner_id, idempotency_key, fingerprint)
        if stored is not None:
            first = TaskRead.model_validate_json(stored.body).model_dump()
            return Created(VersionedTask(cast(TaskRow, first), stored.version), replayed=True)
    now = _now()
    values = {
        **data.model_dump(),
        "id": uuid.uuid4(),
        "user_id": owner_id,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    if change_log.one_statement(conn):
        values.update(owner_id=owner_id, due=None)
        created = await _stamped(conn, owner_id, (await conn.execute(_create_statement(), values)).one())
    else:
        values["seq"] = await change_log.stamp(conn, owner_id)
        created = _versioned((await conn.execute(_INSERT, values)).one())
    if idempotency_key is not None:
        stored = idempotency.StoredResponse(created.id, created.version, render_task(created.task))
        await idempotency.remember(conn, owner_id, idempotency_key, stored)
    return Created(created, replayed=False)


async def get_task(conn: AsyncConnection, owner_id: str, task_id: uuid.UUID) -> VersionedTask:
    """The owner's task, or 403/404."""
    row = (await conn.execute(_GET, {"task_id": task_id, "owner_id": owner_id})).one_or_none()
    if row is None:
        raise await _miss(conn, owner_id, task_id)
    return _versioned(row)


async def update_task(
    conn: AsyncConnection,
    owner_id: str,
    task_id: uuid.UUID,
    changes: dict[str, Any],
    if_match: Sequence[str] | None,
) -> VersionedTask:
    """Apply `changes` to the owner's task if its ETag matches `if_match` (None: unconditional)."""
    versions = _versions(if_match)
    if not changes:
        current = await get_task(conn, owner_id, task_id)
        if versions is not None and current.version not in versions:
            raise PreconditionFailed()
        return current
    params = {f"new_{name}": value for name, value in changes.items()}
    params.update(task_id=task_id, owner_id=owner_id, now=_now(), versions=versions)
    fields, conditional = tuple(sorted(changes)), versions is not None
    if change_log.one_statement(conn):
        params["due"] = None
        row = (await conn.execute(_stamped_update_statement(fields, conditional=conditional), params)).one_or_none()
        if row is None:
            raise await _miss(conn, owner_id, task_id, conditional=if_match is not None)
        return await _stamped(conn, owner_id, row)
    params["seq"] = await change_log.stamp(conn, owner_id)
    row = (await conn.execute(_update_statement(fields, conditional=conditional), params)).one_or_none()
    if row is None:
        raise await _miss(conn, owner_id, task_id, conditional=if_match is not None)
    return _versioned(row)


async def delete_task(conn: AsyncConnection, owner_id: str, task_id: uuid.UUID, if_match: Sequence[str] | None) -> None:
    """Delete the owner's task if its ETag matches `if_match` (None: unconditional)."""
    versions = _versions(if_match)
    now = _now()
    params: dict[str, Any] = {"task_id": task_id, "owner_id": owner_id, "versions": versions}
    if change_log.one_statement(conn):
        params.update(now=now, due=change_log.tombstone_due(conn, now))
        statement = _stamped_delete_statement(conditional=versions is not None)
        buried = (await conn.execute(statement, params)).one_or_none()
        if buried is None:
            raise await _miss(conn, owner_id, task_id, conditional=if_match is not None)
        await change_log.stamped(conn, owner_id, buried.seq, buried.purge_due_at)
        return
    seq = await change_log.stamp(conn, owner_id, tombstone_at=now)
    if (await conn.execute(_delete_statement(conditional=versions is not None), params)).one_or_none() is None:
        raise await _miss(conn, owner_id, task_id, conditional=if_match is not None)
    await change_log.bury(conn, owner_id, task_id, seq, now)


async def list_tasks(conn: AsyncConnection, owner_id: str, query: TaskListQuery) -> TaskPage:
    """One page of the owner's tasks matching `query`, with the total count and the next page's cursor.

    Raises InvalidCursor when `query.cursor` is not one issued for this owner, sort and filters.
    """
    params: dict[str, Any] = {
        "owner_id": owner_id,
        "status": query.status,
        "priority": query.priority,
        "due_before": query.due_before,
        "due_after": query.due_after,
        "pattern": None if query.q is None else "%" + _escape_like(query.q) + "%",
        # One row more than the page tells whether there is a next page.
        "limit": query.limit + 1,
        "offset": query.offset,
    }
    filters = tuple(name for name in _FILTERS if params[name] is not None)
    keyset = _Keyset.none
    if query.cursor is not None:
        key, after_id = _decode_page_cursor(owner_id, query)
        keyset = _Keyset.null_key if key is None and query.sort in _NULLS_LAST else _Keyset.key
        params.update(after_key=key, after_id=after_id)
    page_statement, count_statement = _list_statements(filters, query.sort, keyset)
    rows = (await conn.execute(page_statement, params)).all()
    # Past the last page there is no row for the count to ride on: count separately.
    total = int(rows[0][_VERSION] if rows else (await conn.execute(count_statement, params)).scalar_one())
    items = [_page_item(row) for row in rows[: query.limit]]
    next_cursor = _encode_page_cursor(owner_id, query, items[-1]) if len(rows) > query.limit else None
    return TaskPage(items, total, query.limit, query.offset, next_cursor)


_FILTERS: dict[str, ColumnElement[bool]] = {
    "status": c.status == bindparam("status"),
    "priority": c.priority == bindparam("priority"),
    "due_before": c.due_date < bindparam("due_before"),
    "due_after": c.due_date > bindparam("due_after"),
    "pattern": or_(
        c.title.ilike(bindparam("pattern"), escape="\\"), c.description.ilike(bindparam("pattern"), escape="\\")
    ),
}
# Filters whose matches the triggers count per owner in `task_counts` (alembic 0005; an owner's
# count rows change only under the owner's change_counters lock that `stamp` takes, so never lost).
_COUNTED = {"status": counts.c.status == bindparam("status"), "priority": counts.c.priority == bindparam("priority")}
_NULLS_LAST = (TaskSort.due_date, TaskSort.due_date_desc)


class _Keyset(Enum):
    """Where a page starts: at the first match, after a row with a sort key, or after one without
    (a task with no due date, in a due-date sort).
    """

    none = "none"
    key = "key"
    null_key = "null_key"


# Every shape: 32 filter sets x 10 sorts x 3 starts.
@lru_cache(maxsize=1024)
def _list_statements(filters: tuple[str, ...], sort: TaskSort, keyset: _Keyset) -> tuple[Select[Any], Select[Any]]:
    conditions = [c.user_id == bindparam("owner_id"), *(_FILTERS[name] for name in filters)]
    descending = sort.value.startswith("-")
    key = _SORT_KEYS[sort.value.lstrip("-")]
    order: list[ColumnElement[Any]] = [key.desc(), c.id.desc()] if descending else [key.asc(), c.id.asc()]
    if sort in _NULLS_LAST:
        # Tasks without a due date go last in both directions, on both databases.
        order.insert(0, c.due_date.is_(None))
    page_conditions = [*conditions, *_after(key, descending, keyset, nulls_last=sort in _NULLS_LAST)]
    if set(filters) <= set(_COUNTED):
        # A sum of at most nine rows the triggers keep, however many tasks the owner has.
        count = select(cast_(func.coalesce(func.sum(counts.c.n), literal_column("0")), BigInteger)).where(
            counts.c.user_id == bindparam("owner_id"), *(_COUNTED[name] for name in filters)
        )
    else:
        count = select(func.count()).select_from(tasks).where(*conditions)
    # The count rides along as an uncorrelated subquery: evaluated once, by itself, in the page's
    # snapshot, while the page reads just `limit` rows off the sort index. (A window count(*) OVER ()
    # would make the database fetch and sort every match instead.)
    page = (
        select(*_TASK_COLUMNS, count.scalar_subquery().label("total"))
        .where(*page_conditions)
        .order_by(*order)
        .limit(bindparam("limit"))
    )
    if keyset is _Keyset.none:
        page = page.offset(bindparam("offset"))
    return page, count


def _after(
    key: ColumnElement[Any], descending: bool, keyset: _Keyset, *, nulls_last: bool
) -> list[ColumnElement[bool]]:
    """The rows after the cursor's (key, id) in the sort order: a row-value comparison, which both
    databases match against the (owner, key, id) index, so a deep page reads only its own rows.
    """
    if keyset is _Keyset.none:
        return []
    after_id = bindparam("after_id", type_=c.id.type)
    if keyset is _Keyset.null_key:
        # After a task without a due date come only the others without one, by id.
        return [c.due_date.is_(None), c.id < after_id if descending else c.id > after_id]
    mark = tuple_(bindparam("after_key", type_=key.type), after_id)
    later = tuple_(key, c.id) < mark if descending else tuple_(key, c.id) > mark
    return [or_(later, c.due_date.is_(None)) if nulls_last else later]


# --- page cursors --------------------------------------------------------------------------------
# A version, the last row's id and its sort key, sealed with the owner, sort and filters (app/cursors.py).

_PAGE_CURSOR_VERSION = 1
_PAGE_CURSOR_PERSON = b"taskapi-page"
_HEAD = struct.Struct(">B16s")
_MICROS = struct.Struct(">q")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PRIORITY_RANKS = {p.value: rank for rank, p in enumerate(TaskPriority)}
_INVALID_PAGE_CURSOR = (
    "The cursor is not one this API issued to you for this sort and these filters (garbled, truncated, "
    "another user's or another query's); leave it out to start from the first page."
)


def _page_context(owner_id: str, query: TaskListQuery) -> bytes:
    # Everything that decides which rows a page holds and in what order, except where it starts.
    return orjson.dumps(
        [owner_id, query.sort.value, query.status, query.priority, query.due_before, query.due_after, query.q],
        option=orjson.OPT_UTC_Z,
    )


def _encode_page_cursor(owner_id: str, query: TaskListQuery, last: TaskRow) -> str:
    field = query.sort.value.lstrip("-")
    value = last[field]  # type: ignore[literal-required]
    if field == "title":
        key = value.encode()
    elif field == "priority":
        key = bytes([_PRIORITY_RANKS[value]])
    elif value is None:  # a task without a due date
        key = b""
    else:
        key = _MICROS.pack((value - _EPOCH) // timedelta(microseconds=1))
    payload = _HEAD.pack(_PAGE_CURSOR_VERSION, last["id"].bytes) + key
    return cursors.seal(payload, _page_context(owner_id, query), person=_PAGE_CURSOR_PERSON)


def _decode_page_cursor(owner_id: str, query: TaskListQuery) -> tuple[Any, uuid.UUID]:
    """The (sort key, id) of the row the cursor of `query` follows; InvalidCursor if it is not ours."""
    assert query.cursor is not None
    payload = cursors.unseal(
        query.cursor, _page_context(owner_id, query), person=_PAGE_CURSOR_PERSON, max_length=PAGE_CURSOR_MAX_LENGTH
    )
    if payload is None or len(payload) < _HEAD.size or payload[0] != _PAGE_CURSOR_VERSION:
        raise InvalidCursor(_INVALID_PAGE_CURSOR)
    after_id, key = uuid.UUID(bytes=payload[1 : _HEAD.size]), payload[_HEAD.size :]
    field = query.sort.value.lstrip("-")
    # The checksum matched, so these bytes are what _encode_page_cursor wrote for this sort.
    if field == "title":
        return key.decode(), after_id
    if field == "priority":
        return key[0], after_id
    if not key:
        return None, after_id
    return _EPOCH + timedelta(microseconds=_MICROS.unpack(key)[0]), after_id


@lru_cache(maxsize=64)
def _update_statement(fields: tuple[str, ...], *, conditional: bool) -> Executable:
    stmt = (
        update(tasks)
        .where(*_SCOPE, *([_VERSION_IN] if conditional else []))
        .values({name: bindparam(f"new_{name}") for name in fields})
        .values(updated_at=bindparam("now"), version=c.version + 1, seq=bindparam("seq"))
        .returning(*_READ_COLUMNS)
    )
    return stmt


@lru_cache(maxsize=2)
def _delete_statement(*, conditional: bool) -> Executable:
    return delete(tasks).where(*_SCOPE, *([_VERSION_IN] if conditional else [])).returning(c.id)


# --- the one-statement writes (PostgreSQL; app/services/changes.py explains their lock order) ---

_PURGE_DUE = "purge_due_at"


def _stamp_seq(stamp: CTE) -> ScalarSelect[Any]:
    return select(stamp.c.seq).scalar_subquery()


def _purge_due(stamp: CTE) -> Label[Any]:
    return select(stamp.c.purge_due_at).scalar_subquery().label(_PURGE_DUE)


def _target_exists(*, conditional: bool) -> ColumnElement[bool]:
    # The task as the statement's snapshot sees it, read without a lock (an alias: not correlated
    # with the table the statement writes).
    target = tasks.alias("target")
    where = [target.c.id == bindparam("task_id"), target.c.user_id == bindparam("owner_id")]
    if conditional:
        where.append(target.c.version.in_(bindparam("versions", expanding=True)))
    return exists().where(*where)


@lru_cache(maxsize=1)
def _create_statement() -> Executable:
    stamp = change_log.stamp_cte()
    return cast(
        Executable, insert(tasks).values(seq=_stamp_seq(stamp)).returning(*_READ_COLUMNS, c.seq, _purge_due(stamp))
    )


@lru_cache(maxsize=64)
def _stamped_update_statement(fields: tuple[str, ...], *, conditional: bool) -> Executable:
    stamp = change_log.stamp_cte(_target_exists(conditional=conditional))
    seq = _stamp_seq(stamp)
    return cast(
        Executable,
        update(tasks)
        # Gates the scan of `tasks`: the stamp (and its lock) comes before any task row is read.
        .where(seq.is_not(None), *_SCOPE, *([_VERSION_IN] if conditional else []))
        .values({name: bindparam(f"new_{name}") for name in fields})
        .values(updated_at=bindparam("now"), version=c.version + 1, seq=seq)
        .returning(*_READ_COLUMNS, c.seq, _purge_due(stamp)),
    )


@lru_cache(maxsize=2)
def _stamped_delete_statement(*, conditional: bool) -> Executable:
    stamp = change_log.stamp_cte(_target_exists(conditional=conditional))
    seq = _stamp_seq(stamp)
    gone = (
        delete(tasks)
        .where(seq.is_not(None), *_SCOPE, *([_VERSION_IN] if conditional else []))
        .returning(c.id)
        .cte("gone")
    )
    tomb = change_log.tombstones
    bury = select(
        gone.c.id, bindparam("owner_id", type_=tomb.c.user_id.type), seq, bindparam("now", type_=tomb.c.deleted_at.type)
    )
    return cast(
        Executable,
        insert(tomb).from_select(["id", "user_id", "seq", "deleted_at"], bury).returning(tomb.c.seq, _purge_due(stamp)),
    )


async def _stamped(conn: AsyncConnection, owner_id: str, row: Row[Any]) -> VersionedTask:
    # The written task and its version, then the change number and when a purge is due.
    seq, purge_due = row[_VERSION + 1 :]
    await change_log.stamped(conn, owner_id, seq, purge_due)
    return _versioned(row)


def _escape_like(text: str) -> str:
    # `%` and `_` in the search text match literally.
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# A strong entity-tag as this API issues them: a quoted version number that fits an INTEGER column.
_ETAG = re.compile(r'"([1-9][0-9]{0,9})"', re.ASCII)
_MAX_VERSION = 2**31 - 1


def _versions(if_match: Sequence[str] | None) -> list[int] | None:
    """The versions an If-Match accepts; None when any version will do (no header, or `*`)."""
    if if_match is None or "*" in if_match:
        return None
    versions = [int(m[1]) for tag in if_match if (m := _ETAG.fullmatch(tag)) and int(m[1]) <= _MAX_VERSION]
    # No well-formed tag can match: compare against an impossible version so nothing changes.
    return versions or [-1]


async def _miss(conn: AsyncConnection, owner_id: str, task_id: uuid.UUID, *, conditional: bool = False) -> Exception:
    """Why a scoped statement found nothing: 403 (someone else's), 412 (conditional), else 404.

    A conditional request on a task that is gone is 412, as RFC 9110 13.1.1 says: of several
    clients deleting with the same ETag, the losers learn their view was stale.
    """
    owner = (await conn.execute(_OWNER, {"task_id": task_id})).scalar_one_or_none()
    if owner is not None and owner != owner_id:
        return Forbidden()
    if conditional:
        return PreconditionFailed()
    return NotFound()
