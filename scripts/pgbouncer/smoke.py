"""Smoke test for the local Neon-style pooler started by start.sh.

Usage: <venv>/bin/python scripts/pgbouncer/smoke.py [N_CONNECTIONS]
Reads TASKAPI_PGBOUNCER_DIR (default /tmp/taskapi-pgbouncer)/env.
Exit status 0 if every check behaves as expected.

Checks (all over TLS, verifying the server certificate against ca.crt):
  1. N concurrent asyncpg connections, statement_cache_size=0: no errors.
  2. Same with asyncpg's default statement cache: expected to FAIL in
     transaction pooling (named prepared statements land on other server
     connections) -- reported, not treated as an error.
  3. SQLAlchemy async engine configured the way the app must be
     (statement_cache_size=0 + prepared_statement_cache_size=0): no errors.
"""

import asyncio
import os
import re
import ssl
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
ENV = Path(os.environ.get("TASKAPI_PGBOUNCER_DIR", "/tmp/taskapi-pgbouncer")) / "env"
cfg = dict(line.split("=", 1) for line in ENV.read_text().splitlines() if "=" in line)
url = urlsplit(cfg["TASKAPI_PGBOUNCER_URL"])
DSN = f"postgresql://{url.netloc}{url.path}"  # query (sslmode=...) replaced by ssl=ctx
CTX = ssl.create_default_context(cafile=cfg["TASKAPI_PGBOUNCER_CA_FILE"])


def summarize(results):
    errs = Counter(
        re.sub(r'"__asyncpg_[^"]*"', "<stmt>", f"{type(r).__name__}: {str(r).splitlines()[0]}")
        for r in results
        if isinstance(r, BaseException)
    )
    return sum(errs.values()), errs


async def asyncpg_round(cache_size):
    async def one(i):
        conn = await asyncpg.connect(DSN, ssl=CTX, statement_cache_size=cache_size)
        try:
            for j in range(3):
                async with conn.transaction():
                    await conn.execute("INSERT INTO smoke(worker, n) VALUES ($1, $2)", i, j)
                    await conn.fetchval("SELECT count(*) FROM smoke WHERE worker = $1", i)
                await conn.fetchval("SELECT $1::int + $2::int", i, j)
        finally:
            await conn.close()

    return summarize(await asyncio.gather(*(one(i) for i in range(N)), return_exceptions=True))


async def sqlalchemy_round():
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        "postgresql+asyncpg://" + url.netloc + url.path,
        pool_size=N,
        max_overflow=0,
        connect_args={"ssl": CTX, "statement_cache_size": 0, "prepared_statement_cache_size": 0},
    )

    async def one(i):
        for j in range(3):
            async with engine.begin() as c:
                await c.execute(text("INSERT INTO smoke(worker, n) VALUES (:w, :n)"), {"w": i, "n": j})
                await c.execute(text("SELECT count(*) FROM smoke WHERE worker = :w"), {"w": i})

    try:
        return summarize(await asyncio.gather(*(one(i) for i in range(N)), return_exceptions=True))
    finally:
        await engine.dispose()


async def main():
    conn = await asyncpg.connect(DSN, ssl=CTX, statement_cache_size=0)
    tls = conn._transport.get_extra_info("ssl_object").version()
    await conn.execute("DROP TABLE IF EXISTS smoke; CREATE TABLE smoke(id bigserial PRIMARY KEY, worker int, n int)")
    await conn.close()
    print(f"connected via {tls}, certificate verified against {cfg['TASKAPI_PGBOUNCER_CA_FILE']}")

    ok = True
    n, errs = await asyncpg_round(0)
    print(f"asyncpg statement_cache_size=0, {N} connections: {n} failed tasks")
    ok &= n == 0
    n, errs = await asyncpg_round(100)
    print(f"asyncpg default statement cache, {N} connections: {n} failed tasks (expected > 0)")
    for msg, count in errs.most_common(3):
        print(f"    {count}x {msg}")
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        print("sqlalchemy not installed; skipping")
    else:
        n, errs = await sqlalchemy_round()
        print(f"SQLAlchemy (statement_cache_size=0, prepared_statement_cache_size=0), {N} connections: {n} failed tasks")
        for msg, count in errs.most_common(3):
            print(f"    {count}x {msg}")
        ok &= n == 0

    conn = await asyncpg.connect(DSN, ssl=CTX, statement_cache_size=0)
    await conn.execute("DROP TABLE smoke")
    await conn.close()
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


sys.exit(asyncio.run(main()))
