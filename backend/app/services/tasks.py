"""Every task query. Each function takes the owner's id as a required argument and scopes by it,
so no handler can forget isolation. Reads select plain columns into `TaskRead` (no ORM instances
on the hot path); conditional writes check the version inside the UPDATE/DELETE statement itself,
so concurrent writers holding the same ETag cannot both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Forbidden, NotFound, PreconditionFailed
from app.models.task import Task, TaskPriority, TaskStatus
from app.schemas.task import TaskCreate, TaskListQuery, TaskPage, TaskRead, TaskSort

tasks = Task.__table__  # type: ignore[attr-defined]
c = tasks.c
# Exactly the columns of TaskRead, plus the version that is the ETag.
_READ_COLUMNS = (
    c.id,
    c.title,
    c.description,
    c.status,
    c.priority,
    c.due_date,
    c.user_id,
    c.created_at,
    c.updated_at,
    c.version,
)
_PRIORITY_RANK = case({p.value: rank for rank, p in enumerate(TaskPriority)}, value=c.priority)
_SORT_KEYS: dict[str, ColumnElement[Any]] = {
    "created_at": c.created_at,
    "updated_at": c.updated_at,
    "due_date": c.due_date,
    "priority": _PRIORITY_RANK,
    "title": c.title,
}


class VersionedTask:
    """A task read from the database with its version (the ETag)."""

    __slots__ = ("task", "version")

    def __init__(self, task: TaskRead, version: int) -> None:
        self.task = task
        self.version = version

    @property
    def etag(self) -> str:
        """The strong ETag of this representation."""
        return f'"{self.version}"'


def _to_read(row: Row[*tuple[Any, ...]]) -> TaskRead:
    # Values come from our own table with its constraints: no need to validate them again.
    m = row._mapping
    return TaskRead.model_construct(
        id=m["id"],
        title=m["title"],
        description=m["description"],
        status=TaskStatus(m["status"]),
        priority=TaskPriority(m["priority"]),
        due_date=m["due_date"],
        user_id=m["user_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _versioned(row: Row[*tuple[Any, ...]]) -> VersionedTask:
    return VersionedTask(_to_read(row), row._mapping["version"])


def _now() -> datetime:
    return datetime.now(UTC)


async def create_task(session: AsyncSession, owner_id: str, data: TaskCreate) -> VersionedTask:
    """Insert a new task owned by `owner_id`."""
    now = _now()
    values = {
        **data.model_dump(),
        "id": uuid.uuid4(),
        "user_id": owner_id,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    row = (await session.execute(insert(tasks).values(values).returning(*_READ_COLUMNS))).one()
    return _versioned(row)


async def get_task(session: AsyncSession, owner_id: str, task_id: uuid.UUID) -> VersionedTask:
    """The owner's task, or 403/404."""
    stmt = select(*_READ_COLUMNS).where(c.id == task_id, c.user_id == owner_id)
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise await _miss(session, owner_id, task_id)
    return _versioned(row)


async def update_task(
    session: AsyncSession,
    owner_id: str,
    task_id: uuid.UUID,
    changes: dict[str, Any],
    if_match: Sequence[str] | None,
) -> VersionedTask:
    """Apply `changes` to the owner's task if its ETag matches `if_match` (None: unconditional)."""
    if not changes:
        current = await get_task(session, owner_id, task_id)
        if if_match is not None and not _matches(if_match, current.version):
            raise PreconditionFailed("The task has changed or was deleted since you read it (ETag mismatch).")
        return current
    stmt = (
        update(tasks)
        .where(c.id == task_id, c.user_id == owner_id, *_version_condition(if_match))
        .values(**changes, updated_at=_now(), version=c.version + 1)
        .returning(*_READ_COLUMNS)
    )
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise await _miss(session, owner_id, task_id, conditional=if_match is not None)
    return _versioned(row)


async def delete_task(session: AsyncSession, owner_id: str, task_id: uuid.UUID, if_match: Sequence[str] | None) -> None:
    """Delete the owner's task if its ETag matches `if_match` (None: unconditional)."""
    stmt = delete(tasks).where(c.id == task_id, c.user_id == owner_id, *_version_condition(if_match)).returning(c.id)
    if (await session.execute(stmt)).one_or_none() is None:
        raise await _miss(session, owner_id, task_id, conditional=if_match is not None)


async def list_tasks(session: AsyncSession, owner_id: str, query: TaskListQuery) -> TaskPage:
    """One page of the owner's tasks matching `query`, with the total count, in one round trip."""
    conditions = _filters(owner_id, query)
    key, descending = _sort(query.sort)
    order: list[ColumnElement[Any]] = [key.desc(), c.id.desc()] if descending else [key.asc(), c.id.asc()]
    if query.sort in (TaskSort.due_date, TaskSort.due_date_desc):
        # Tasks without a due date go last in both directions, on both databases.
        order.insert(0, c.due_date.is_(None))
    stmt = (
        select(*_READ_COLUMNS, func.count().over().label("total"))
        .where(*conditions)
        .order_by(*order)
        .limit(query.limit)
        .offset(query.offset)
    )
    rows = (await session.execute(stmt)).all()
    if rows:
        total = int(rows[0]._mapping["total"])
    else:
        # Past the last page the window has no row to ride on: count separately.
        total = int((await session.execute(select(func.count()).where(*conditions))).scalar_one())
    items = [_to_read(row) for row in rows]
    return TaskPage.model_construct(items=items, total=total, limit=query.limit, offset=query.offset)


def _filters(owner_id: str, query: TaskListQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [c.user_id == owner_id]
    if query.status is not None:
        conditions.append(c.status == query.status.value)
    if query.priority is not None:
        conditions.append(c.priority == query.priority.value)
    if query.due_before is not None:
        conditions.append(c.due_date < query.due_before)
    if query.due_after is not None:
        conditions.append(c.due_date > query.due_after)
    if query.q is not None:
        pattern = "%" + query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append(or_(c.title.ilike(pattern, escape="\\"), c.description.ilike(pattern, escape="\\")))
    return conditions


def _sort(sort: TaskSort) -> tuple[ColumnElement[Any], bool]:
    descending = sort.value.startswith("-")
    return _SORT_KEYS[sort.value.lstrip("-")], descending


def _matches(if_match: Sequence[str], version: int) -> bool:
    return "*" in if_match or f'"{version}"' in if_match


def _version_condition(if_match: Sequence[str] | None) -> list[ColumnElement[bool]]:
    if if_match is None or "*" in if_match:
        return []
    versions = [int(tag[1:-1]) for tag in if_match if tag[1:-1].isdigit() and len(tag) < 20]
    # No well-formed tag can match: compare against an impossible version so nothing changes.
    return [c.version.in_(versions or [-1])]


async def _miss(session: AsyncSession, owner_id: str, task_id: uuid.UUID, *, conditional: bool = False) -> Exception:
    """Why a scoped statement found nothing: 403 (someone else's), 412 (conditional), else 404.

    A conditional request on a task that is gone is 412, as RFC 9110 13.1.1 says: of several
    clients deleting with the same ETag, the losers learn their view was stale.
    """
    owner = (await session.execute(select(c.user_id).where(c.id == task_id))).scalar_one_or_none()
    if owner is not None and owner != owner_id:
        return Forbidden("This task belongs to another user.")
    if conditional:
        return PreconditionFailed("The task has changed or was deleted since you read it (ETag mismatch).")
    return NotFound("No task with this id.")
