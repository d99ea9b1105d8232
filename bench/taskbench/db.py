"""Database setup for the benchmark: create, migrate, seed, reset, EXPLAIN."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from taskbench.config import BACKEND_DIR, VENV_BIN

TASKS_PER_USER = 100
BIG_USER = "bench-big"
SMALL_USER = "bench-small"  # 100 tasks; never written to, so comparisons stay stable


@dataclass(frozen=True)
class Dataset:
    """What a database is seeded with: `users` x 100 tasks, the 100-task SMALL_USER and BIG_USER."""

    name: str
    users: int
    big_tasks: int

    @property
    def rows(self) -> int:
        """Tasks seeded in all."""
        return self.users * TASKS_PER_USER + self.big_tasks + TASKS_PER_USER


STANDARD = Dataset("standard", users=1_000, big_tasks=100_000)
SCALE = Dataset("scale", users=10_000, big_tasks=100_000)
SMOKE = Dataset("smoke", users=50, big_tasks=2_000)
DATASETS = {d.name: d for d in (STANDARD, SCALE, SMOKE)}
# The standard dataset's sizes, under the names other scripts import.
USERS = STANDARD.users
BIG_TASKS = STANDARD.big_tasks
SEEDED_ROWS = STANDARD.rows
# Every seeded row is older than this; anything newer was written by a run and
# is deleted between runs so each run sees the same table.
SEED_CUTOFF = datetime(2025, 1, 1, tzinfo=UTC)
SAMPLE_PAIRS = 20_000

STATUSES = ("pending", "in_progress", "completed")
PRIORITIES = ("low", "medium", "high")
COPY_COLUMNS = [
    "id", "title", "description", "status", "priority", "due_date",
    "user_id", "created_at", "updated_at", "version", "seq",
]  # fmt: skip

# Used only until backend/ has migrations; switch is in ensure_schema().
FALLBACK_DDL = """
CREATE TABLE tasks (
    id UUID PRIMARY KEY,
    user_id VARCHAR(255) NOT NULL,
    title VARCHAR(255) NOT NULL,
    description TEXT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'in_progress', 'completed')),
    priority VARCHAR(8) NOT NULL DEFAULT 'medium'
        CHECK (priority IN ('low', 'medium', 'high')),
    due_date TIMESTAMPTZ NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    seq BIGINT NOT NULL
);
CREATE TABLE change_counters (
    user_id VARCHAR(255) PRIMARY KEY,
    seq BIGINT NOT NULL,
    purged_seq BIGINT NOT NULL DEFAULT 0,
    purge_due_at TIMESTAMPTZ NULL
);
CREATE TABLE task_tombstones (
    id UUID PRIMARY KEY,
    user_id VARCHAR(255) NOT NULL,
    seq BIGINT NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ix_tasks_user_id_created_at ON tasks (user_id, created_at, id);
CREATE INDEX ix_tasks_user_id_updated_at ON tasks (user_id, updated_at, id);
CREATE INDEX ix_tasks_user_id_due_date ON tasks (user_id, due_date, id);
CREATE INDEX ix_tasks_user_id_status_created_at
    ON tasks (user_id, status, created_at, id);
"""

LIST_SQL = (
    "SELECT id, title, description, status, priority, due_date, user_id, "
    "created_at, updated_at FROM tasks WHERE {where} "
    "ORDER BY created_at DESC, id DESC LIMIT 20 OFFSET 0"
)
COUNT_SQL = "SELECT count(*) FROM tasks WHERE {where}"


def user_id(index: int) -> str:
    return f"bench-u{index:04d}"  # 4 digits: up to 10,000 users


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def has_migrations() -> bool:
    return (BACKEND_DIR / "alembic.ini").is_file()


@asynccontextmanager
async def _connect(url: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        yield conn
    finally:
        await conn.close()


async def _ensure_database(url: str) -> None:
    parts = urlsplit(asyncpg_dsn(url))
    name = parts.path.lstrip("/")
    async with _connect(urlunsplit(parts._replace(path="/postgres"))) as conn:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')


async def _drop_database(url: str) -> None:
    parts = urlsplit(asyncpg_dsn(url))
    async with _connect(urlunsplit(parts._replace(path="/postgres"))) as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


def drop_database(url: str) -> None:
    """DROP DATABASE (a run's own, at its end)."""
    asyncio.run(_drop_database(url))


def ensure_database(url: str) -> None:
    """CREATE DATABASE if the target does not exist yet."""
    asyncio.run(_ensure_database(url))


async def _prepare_schema(url: str, migrations: bool) -> None:
    async with _connect(url) as conn:
        has_tasks = await conn.fetchval("SELECT to_regclass('tasks') IS NOT NULL")
        migrated = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not migrations and not has_tasks:
            await conn.execute(FALLBACK_DDL)
        elif migrations and has_tasks and not migrated:
            # Left over from the fallback DDL: let the real migrations own it.
            await conn.execute("DROP TABLE tasks")


def ensure_schema(url: str, app_env: dict[str, str]) -> str:
    """Bring the schema up; returns how ("alembic" or "fallback DDL").

    app_env: DATABASE_URL etc., since the migrations load the app's settings."""
    migrations = has_migrations()
    asyncio.run(_prepare_schema(url, migrations))
    if not migrations:
        return "fallback DDL"
    subprocess.run(
        [str(VENV_BIN / "alembic"), "upgrade", "head"],
        cwd=BACKEND_DIR,
        env={**os.environ, **app_env},
        check=True,
        stdout=sys.stderr,
    )
    return "alembic"


def _seed_rows(rng: random.Random, dataset: Dataset) -> Iterator[tuple[Any, ...]]:
    def rows(user: str, count: int, start: datetime, step: timedelta) -> Iterator[tuple[Any, ...]]:
        for i in range(count):
            created = start + step * i
            yield (
                uuid.UUID(int=rng.getrandbits(128), version=4),
                f"Seeded task {i} of {user}",
                "Seeded by bench/run.py" if i % 2 else None,
                STATUSES[i % 3],
                PRIORITIES[(i // 3) % 3],
                created + timedelta(days=7) if i % 4 == 0 else None,
                user,
                created,
                created,
                1,
                i + 1,  # the user's change number (backend/app/services/changes.py)
            )

    base = datetime(2024, 1, 1, tzinfo=UTC)
    for index in range(dataset.users):
        yield from rows(
            user_id(index),
            TASKS_PER_USER,
            base + timedelta(seconds=index),
            timedelta(hours=7),
        )
    yield from rows(SMALL_USER, TASKS_PER_USER, base, timedelta(hours=7))
    yield from rows(
        BIG_USER,
        dataset.big_tasks,
        datetime(2023, 6, 1, tzinfo=UTC),
        timedelta(minutes=5),
    )


async def _delete_run_rows(conn: Any) -> None:
    await conn.execute("DELETE FROM tasks WHERE created_at >= $1", SEED_CUTOFF)


async def _has_task_counts(conn: Any) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('task_counts') IS NOT NULL"))


async def _seed(conn: Any, dataset: Dataset) -> None:
    await conn.execute("TRUNCATE tasks")
    await conn.execute("TRUNCATE change_counters, task_tombstones")
    counted = await _has_task_counts(conn)
    if counted:
        # Per-row triggers would upsert task_counts once per copied row (1.1M times at scale): they
        # are off for the COPY, and the counts are computed in one statement afterwards.
        await conn.execute("TRUNCATE task_counts")
        await conn.execute("ALTER TABLE tasks DISABLE TRIGGER USER")
    try:
        records = _seed_rows(random.Random(42), dataset)
        await conn.copy_records_to_table("tasks", records=records, columns=COPY_COLUMNS)
    finally:
        if counted:
            await conn.execute("ALTER TABLE tasks ENABLE TRIGGER USER")
    if counted:
        await conn.execute(RECOUNT_SQL)
    # Each user's change counter starts at their highest change number, as migration 0004 does.
    await conn.execute(
        "INSERT INTO change_counters (user_id, seq, purged_seq) SELECT user_id, max(seq), 0 FROM tasks GROUP BY user_id"
    )
    # VACUUM sets the visibility map so count(*) can use index-only scans.
    await conn.execute("VACUUM ANALYZE tasks")


async def _ensure_seeded(url: str, dataset: Dataset) -> bool:
    async with _connect(url) as conn:
        await _delete_run_rows(conn)
        if await conn.fetchval("SELECT count(*) FROM tasks") == dataset.rows:
            seeded = False
        else:
            await _seed(conn, dataset)
            seeded = True
        if await _has_task_counts(conn) and await conn.fetchval(COUNTS_DIFFER_SQL):
            # Seeded before the counters existed and not backfilled: count once, like a seed does.
            print(
                "[bench] task_counts disagrees with tasks: recounting",
                file=sys.stderr,
                flush=True,
            )
            async with conn.transaction():
                await conn.execute("LOCK TABLE tasks IN SHARE MODE")
                await conn.execute("DELETE FROM task_counts")
                await conn.execute(RECOUNT_SQL)
        return seeded


RECOUNT_SQL = (
    "INSERT INTO task_counts (user_id, status, priority, n) "
    "SELECT user_id, status, priority, count(*) FROM tasks GROUP BY user_id, status, priority"
)
# Rows of task_counts that differ from the real counts (a missing row counts as 0).
COUNTS_DIFFER_SQL = """
SELECT count(*) FROM (
    SELECT user_id, status, priority, count(*) AS n FROM tasks GROUP BY user_id, status, priority
) AS actual
FULL JOIN task_counts AS kept USING (user_id, status, priority)
WHERE coalesce(actual.n, 0) <> coalesce(kept.n, 0)
"""


async def _counts_differ(url: str) -> int:
    async with _connect(url) as conn:
        if not await _has_task_counts(conn):
            return 0
        return int(await conn.fetchval(COUNTS_DIFFER_SQL))


def counts_differ(url: str) -> int:
    """How many (user, status, priority) groups task_counts gets wrong (0 without the table)."""
    return asyncio.run(_counts_differ(url))


def ensure_seeded(url: str, dataset: Dataset = STANDARD) -> bool:
    """Seed once with COPY (skipped when already seeded); True if it seeded. With a task_counts
    table (maintained by triggers), its counts must equal the real ones afterwards."""
    return asyncio.run(_ensure_seeded(url, dataset))


async def _reset(url: str) -> None:
    async with _connect(url) as conn:
        await _delete_run_rows(conn)
        await conn.execute("VACUUM ANALYZE tasks")


def reset(url: str) -> None:
    """Before each run: drop rows earlier runs created and vacuum away their
    bloat, so every run (ours or baseline) sees the same table."""
    asyncio.run(_reset(url))


@dataclass(frozen=True)
class Fixtures:
    pairs: list[tuple[int, str]]  # (user index, task id) for get/patch
    pg_version: str
    users: int = USERS  # bench-u0000 ... : one token each


async def _load_fixtures(url: str, dataset: Dataset) -> Fixtures:
    async with _connect(url) as conn:
        rows = await conn.fetch(
            "SELECT user_id, id::text AS id FROM tasks WHERE user_id LIKE 'bench-u%' AND created_at < $1",
            SEED_CUTOFF,
        )
        version = await conn.fetchval("SHOW server_version")
    pairs = [(int(r["user_id"].removeprefix("bench-u")), r["id"]) for r in rows]
    sample = random.Random(7).sample(pairs, min(SAMPLE_PAIRS, len(pairs)))
    return Fixtures(pairs=sample, pg_version=version, users=dataset.users)


def load_fixtures(url: str, dataset: Dataset = STANDARD) -> Fixtures:
    """Real (user, task id) pairs for the get/patch profiles."""
    return asyncio.run(_load_fixtures(url, dataset))


EXPLAINED = {
    "page": LIST_SQL.format(where="user_id = $1"),
    "count": COUNT_SQL.format(where="user_id = $1"),
    "page, status=completed": LIST_SQL.format(where="user_id = $1 AND status = 'completed'"),
    "count, status=completed": COUNT_SQL.format(where="user_id = $1 AND status = 'completed'"),
    # The single-statement form (total riding on each row) for comparison: the
    # window makes PostgreSQL read and sort every matching row, not just 20.
    "page + count(*) OVER () in one statement": LIST_SQL.replace(
        "updated_at FROM", "updated_at, count(*) OVER () AS total FROM"
    ).format(where="user_id = $1"),
}


async def _explain(url: str) -> dict[str, str]:
    plans = {}
    async with _connect(url) as conn:
        for name, sql in EXPLAINED.items():
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", BIG_USER)
            plans[name] = f"{sql}  -- $1 = '{BIG_USER}'\n" + "\n".join(r[0] for r in rows)
    return plans


def explain_list_queries(url: str) -> dict[str, str]:
    """EXPLAIN ANALYZE the list endpoint's queries for the 100k-task user."""
    return asyncio.run(_explain(url))
