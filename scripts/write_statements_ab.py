"""A/B of one PATCH's database work alone, as the app sends it before and after issue 12, on raw
asyncpg (no framework), alternating in blocks so both see the same machine load:

- A (transaction): BEGIN; the stamp upsert (with pg_notify); UPDATE ... RETURNING; COMMIT.
- B (one statement): the stamp as a data-modifying CTE and the UPDATE, in autocommit.

    cd backend && ../.venv/bin/python ../scripts/write_statements_ab.py [--patches 2000] [--async-commit]

Prints the median latency of each (same prepared statements, same connection, one task).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from app.services import changes, tasks

BLOCK = 100


def compiled(statement: Any, values: dict[str, Any]) -> tuple[str, list[Any], list[str]]:
    """The SQL asyncpg receives for `statement`, its positional arguments and their names."""
    dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
    sql = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
    params = sql.construct_params(values) or {}
    names = list(sql.positiontup or ())
    return sql.string, [params[name] for name in names], names


async def main(patches: int, *, async_commit: bool) -> None:
    """Run both shapes in alternating blocks and print their medians."""
    import asyncpg

    from tests.support.apps import postgres_database

    async with postgres_database() as url:
        connection = await asyncpg.connect(url)
        if async_commit:
            # Leaves out the WAL flush each commit waits for: what remains is round trips and work.
            await connection.execute("SET synchronous_commit = off")
        owner, task_id, now = f"ab-{uuid.uuid4()}", uuid.uuid4(), datetime.now(UTC)
        await connection.execute(
            "INSERT INTO change_counters (user_id, seq) VALUES ($1, 1);"
            "INSERT INTO tasks (id, user_id, title, status, priority, created_at, updated_at, version, seq)"
            " VALUES ($2, $1, 't', 'pending', 'low', now(), now(), 1, 1)".replace("$1", f"'{owner}'").replace(
                "$2", f"'{task_id}'"
            )
        )
        common = {"owner_id": owner, "task_id": task_id, "now": now, "due": None, "new_title": "x"}
        stamp_sql, stamp_args, _ = compiled(changes._stamp_statement("postgresql"), common)
        old = tasks._update_statement(("title",), conditional=False)
        update_sql, update_args, update_names = compiled(old, {**common, "seq": 0})
        one_sql, one_args, _ = compiled(tasks._stamped_update_statement(("title",), conditional=False), common)
        stamp_stmt = await connection.prepare(stamp_sql)
        update_stmt = await connection.prepare(update_sql)
        one_stmt = await connection.prepare(one_sql)
        seq_at = update_names.index("seq")

        async def transaction() -> None:
            async with connection.transaction():
                update_args[seq_at] = (await stamp_stmt.fetchrow(*stamp_args))["seq"]
                await update_stmt.fetchrow(*update_args)

        async def one_statement() -> None:
            await one_stmt.fetchrow(*one_args)

        timings: dict[str, list[float]] = {"transaction": [], "one statement": []}
        for _ in range(2):  # warm-up
            await transaction()
            await one_statement()
        for _ in range(patches // BLOCK):
            for name, run in (("transaction", transaction), ("one statement", one_statement)):
                for _ in range(BLOCK):
                    started = time.perf_counter()
                    await run()
                    timings[name].append(time.perf_counter() - started)
        await connection.close()
    for name, values in timings.items():
        quartiles = statistics.quantiles(values, n=4)
        print(
            f"{name}: {len(values)} PATCHes, median {statistics.median(values) * 1000:.3f} ms "
            f"(quartiles {quartiles[0] * 1000:.3f} / {quartiles[2] * 1000:.3f} ms)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--async-commit", action="store_true", help="SET synchronous_commit = off")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.patches, async_commit=arguments.async_commit))
