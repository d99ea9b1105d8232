"""Round trips and latency of the single-statement writes, in process (issue 12).

    cd backend && ../.venv/bin/python ../scripts/measure_writes.py [BACKEND_DIR] [--patches N] [--sql]

BACKEND_DIR (default: this checkout's backend) is the code measured, so an older commit can be
measured with the same script (`git archive <commit> backend | tar -x -C /tmp/old`). On a fresh
PostgreSQL database (TEST_POSTGRES_URL's server): round trips per POST, PUT, PATCH, PATCH with
If-Match and DELETE counted on the wire (tests/support/pgwire.py, after a warm-up), then the median
latency of N sequential PATCHes of one task through the app (httpx in process, no proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent.parent / "backend"


def main() -> None:
    """Parse the arguments and measure."""
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", nargs="?", default=str(HERE))
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--sql", action="store_true", help="print the SQL each write ran")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))  # the test support (database, proxy, tokens) of this checkout
    sys.path.insert(0, args.backend)  # the app measured
    asyncio.run(measure(args.patches, args.sql))


async def measure(patches: int, show_sql: bool) -> None:
    """Print the round trips of each write, then the median latency of `patches` PATCHes."""
    spec = importlib.util.spec_from_file_location("pgwire", HERE / "tests" / "support" / "pgwire.py")
    assert spec is not None and spec.loader is not None
    pgwire: Any = importlib.util.module_from_spec(spec)
    sys.modules["pgwire"] = pgwire
    spec.loader.exec_module(pgwire)
    from sqlalchemy.engine import make_url

    from tests.support import auth, new_user
    from tests.support.apps import http_client, make_settings, postgres_database, running_app

    async with postgres_database() as direct:
        url = make_url(direct)
        async with pgwire.wire_proxy(url.host, url.port or 5432) as (port, log):
            proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
            settings = make_settings(proxied, DATABASE_URL_DIRECT=direct, DB_POOL_SIZE=2)
            async with running_app(settings) as app, http_client(app) as client:
                headers = auth(new_user())
                ids = []
                for _ in range(40):
                    created = await client.post("/api/tasks", json={"title": "t"}, headers=headers)
                    ids.append((created.json()["id"], created.headers["ETag"]))
                etags = dict(ids)

                async def conditional_patch(task_id: str) -> httpx.Response:
                    response = await client.patch(
                        f"/api/tasks/{task_id}", json={"title": "x"}, headers=headers | {"If-Match": etags[task_id]}
                    )
                    etags[task_id] = response.headers["ETag"]
                    return response

                shapes: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
                    "POST": lambda: client.post("/api/tasks", json={"title": "p"}, headers=headers),
                    "PUT": lambda: client.put(f"/api/tasks/{ids[0][0]}", json={"title": "r"}, headers=headers),
                    "PATCH": lambda: client.patch(f"/api/tasks/{ids[1][0]}", json={"title": "x"}, headers=headers),
                    "PATCH If-Match": lambda: conditional_patch(ids[2][0]),
                    "DELETE": lambda: client.delete(f"/api/tasks/{ids.pop()[0]}", headers=headers),
                }
                for name, request in shapes.items():
                    for _ in range(4):
                        await request()
                    mark = log.mark()
                    response = await request()
                    assert response.status_code < 300, response.text
                    statements = log.statements(mark)
                    print(f"{name}: {log.round_trips(mark)} round trips: {[s.split()[0] for s in statements]}")
                    if show_sql:
                        print("\n".join(statements), "\n")
        settings = make_settings(direct, DB_POOL_SIZE=2)
        async with running_app(settings) as app, http_client(app) as client:
            headers = auth(new_user())
            task_id = (await client.post("/api/tasks", json={"title": "t"}, headers=headers)).json()["id"]
            timings = []
            for number in range(patches + 50):
                started = time.perf_counter()
                response = await client.patch(f"/api/tasks/{task_id}", json={"title": f"n{number}"}, headers=headers)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200
                if number >= 50:  # after a warm-up
                    timings.append(elapsed)
            quartiles = statistics.quantiles(timings, n=4)
            print(
                f"{patches} PATCHes: median {statistics.median(timings) * 1000:.3f} ms "
                f"(quartiles {quartiles[0] * 1000:.3f} / {quartiles[2] * 1000:.3f} ms)"
            )


if __name__ == "__main__":
    main()
