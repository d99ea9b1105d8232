"""Per-request CPU instructions of the app (plus its in-process client), counted by callgrind.

    .venv/bin/python backend/scripts/instructions.py --backend backend [--routes get,list,create,patch]

Needs valgrind, gcc (for the callgrind client requests in cgctl.c) and the local PostgreSQL.

Runs itself under `valgrind --tool=callgrind --instr-atstart=no`: the app (created from the given
backend directory, on its own freshly migrated PostgreSQL database, HS256 token, rate limits off,
JSON access log to /dev/null, as `make bench` serves it; with `--rate-limit-url redis://...` rate
limits on in that storage, budgets too large to refuse anything) answers requests through
httpx.ASGITransport. For each route, after a warm-up, instructions are counted over N1 and over N2
requests; per request = (count(N2) - count(N1)) / (N2 - N1), so fixed costs cancel out.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import glob
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The callgrind client requests (valgrind/callgrind.h macros), built on first use.
CGCTL = Path(tempfile.gettempdir()) / "instructions-cgctl.so"
SECRET = "instructions-secret-" + "x" * 32
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROUTES = ("get", "list", "create", "patch")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True, type=Path)
    p.add_argument("--db", default=None, help="PostgreSQL database name (dropped and re-created)")
    p.add_argument("--routes", default=",".join(ROUTES))
    p.add_argument("--n1", type=int, default=100)
    p.add_argument("--n2", type=int, default=400)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--seed", type=int, default=100, help="tasks of the user (the bench has 100)")
    p.add_argument(
        "--watch-scale",
        type=float,
        default=1.0,
        help="multiply app.middleware.WATCH_AFTER_SECONDS (if any) to undo valgrind's slowdown",
    )
    p.add_argument(
        "--rate-limit-url",
        default=None,
        help="rate limits on, in this storage (memory:// or a redis:// URL), with budgets nothing exceeds",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", action="store_true")
    p.add_argument("--cprofile", default=None, help="no valgrind: cProfile the N2 loop of each route into this prefix")
    return p.parse_args()


async def reset_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def app_env(db: str, rate_limit_url: str | None = None) -> dict[str, str]:
    limits = {"RATE_LIMIT_ENABLED": "false"}
    if rate_limit_url:
        limits = {
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_STORAGE_URL": rate_limit_url,
            "RATE_LIMIT_READ": "1000000/hour",
            "RATE_LIMIT_WRITE": "1000000/hour",
        }
    return {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db}",
        "JWT_SECRET": SECRET,
        "JWT_ALGORITHM": "HS256",
        "JWT_ISSUER": "",
        "JWT_AUDIENCE": "",
        "JWT_JWKS_URL": "",
        **limits,
        "METRICS_ENABLED": "false",
        "ENV_FILE": "/dev/null",
        "LOG_LEVEL": "INFO",
        # Under valgrind a pool checkout can outlast the 3 s default (a 503); no per-request cost.
        "DB_CONNECT_TIMEOUT": "30",
    }


async def child(args: argparse.Namespace) -> None:
    cg: Any  # the callgrind client requests (a CDLL), or cProfile standing in for them
    if args.cprofile:
        import cProfile

        class _Prof:
            def cg_start(self) -> None:
                pass

            def cg_stop(self) -> None:
                pass

            def cg_zero(self) -> None:
                self.p = cProfile.Profile()
                self.p.enable()

            def cg_dump(self, name: bytes) -> None:
                self.p.disable()
                self.p.dump_stats(f"{args.cprofile}-{name.decode().replace(':', '-')}.prof")

        cg = _Prof()
    else:
        cg = ctypes.CDLL(str(CGCTL))  # its cg_* functions, looked up by name: no types for mypy
        cg.cg_dump.argtypes = [ctypes.c_char_p]
    sys.path.insert(0, str(args.backend))
    import httpx
    import jwt

    from app import main as app_main
    from app.logging import configure_logging

    real_stderr = sys.stderr
    # The access log (JSON lines, as served) goes to /dev/null: the handler binds sys.stderr.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115, ASYNC230
    try:
        configure_logging("INFO")
    finally:
        sys.stderr = real_stderr
    try:
        from app import middleware

        if hasattr(middleware, "WATCH_AFTER_SECONDS"):
            middleware.WATCH_AFTER_SECONDS *= args.watch_scale
    except ImportError:
        pass
    storage_failures = 0
    if args.rate_limit_url:
        from app import ratelimit

        # Valgrind runs code ~50 times slower: a 100 ms storage bound would fail most checks open
        # (and then skip the storage for a second), which is not the cost being measured.
        ratelimit.STORAGE_TIMEOUT_S = 10.0
        storage_failed = ratelimit.RateLimiter._storage_failed

        def count_failure(self: ratelimit.RateLimiter, exc: Exception, unchecked: int = 1) -> None:
            nonlocal storage_failures
            storage_failures += 1
            storage_failed(self, exc, unchecked)

        ratelimit.RateLimiter._storage_failed = count_failure  # type: ignore[method-assign]
    app = app_main.create_app(app_main.load_settings())
    token = jwt.encode({"sub": "instr-user", "exp": int(time.time()) + 7200}, SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", headers=headers) as c:
            ids = []
            for i in range(args.seed):
                r = await c.post("/api/tasks", json={"title": f"seed {i}", "priority": "high"})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            counter = 0

            async def one(route: str) -> None:
                nonlocal counter
                counter += 1
                task_id = ids[counter % len(ids)]
                if route == "get":
                    r = await c.get(f"/api/tasks/{task_id}")
                    expected = 200
                elif route == "list":
                    r = await c.get("/api/tasks?limit=20")
                    expected = 200
                elif route == "create":
                    body = (
                        f'{{"title":"wrk task {counter}","description":"created by the benchmark","priority":"high"}}'
                    )
                    r = await c.post("/api/tasks", content=body)
                    expected = 201
                elif route == "patch":
                    r = await c.patch(f"/api/tasks/{task_id}", content='{"status":"completed"}')
                    expected = 200
                else:
                    raise SystemExit(f"unknown route {route}")
                if r.status_code != expected:
                    raise SystemExit(f"{route}: {r.status_code} {r.text}")

            cg.cg_start()
            for route in args.routes.split(","):
                for _ in range(args.warmup):
                    await one(route)
                for n in (args.n1, args.n2):
                    cg.cg_zero()
                    for _ in range(n):
                        await one(route)
                    cg.cg_dump(f"{route}:{n}".encode())
            cg.cg_stop()
    if args.rate_limit_url:
        # On stdout, which the parent passes through: counts with failures in them are not valid.
        print(f"rate limit storage failures: {storage_failures}")


def totals(out_dir: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for path in glob.glob(str(out_dir / "cg.out*")):
        desc = total = None
        with open(path) as f:
            for line in f:
                if line.startswith("desc: Trigger: Client Request: "):
                    desc = line.split("Client Request: ", 1)[1].strip()
                elif line.startswith(("totals:", "summary:")):
                    total = int(line.split()[1])
        if desc and total is not None:
            found[desc] = total
    return found


def main() -> None:
    args = parse()
    args.backend = args.backend.resolve()
    if args.cprofile and not args.child:
        db = args.db or f"instr_{uuid.uuid4().hex[:8]}"
        asyncio.run(reset_database(db))
        os.environ.update(app_env(db, args.rate_limit_url))
        subprocess.run(
            [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
            cwd=args.backend,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.chdir(args.backend)
        asyncio.run(child(args))
        asyncio.run(_drop(db))
        return
    if args.child:
        asyncio.run(child(args))
        return
    backend = args.backend.resolve()
    if not CGCTL.exists():
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(CGCTL), str(HERE / "cgctl.c")], check=True)
    db = args.db or f"instr_{uuid.uuid4().hex[:8]}"
    out = args.out or Path(tempfile.gettempdir()) / f"instructions-{db}"
    out.mkdir(parents=True, exist_ok=True)
    for old in glob.glob(str(out / "cg.out*")):
        os.remove(old)
    asyncio.run(reset_database(db))
    env = {**os.environ, **app_env(db, args.rate_limit_url)}
    python = sys.executable
    subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        cwd=backend,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/cg.out",
        python,
        __file__,
        "--child",
        *sys.argv[1:],
        "--backend",
        str(backend),
    ]
    with open(out / "stderr.txt", "w") as stderr:
        subprocess.run(cmd, cwd=backend, env={**env, "PYTHONHASHSEED": "0"}, check=True, stderr=stderr)
    found = totals(out)
    print(f"backend={backend} db={db} n1={args.n1} n2={args.n2} (instructions per request)")
    for route in args.routes.split(","):
        a, b = found[f"{route}:{args.n1}"], found[f"{route}:{args.n2}"]
        print(f"{route:8s} {(b - a) / (args.n2 - args.n1) / 1e6:8.4f} M")
    asyncio.run(_drop(db))


async def _drop(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
