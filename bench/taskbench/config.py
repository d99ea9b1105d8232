"""Benchmark settings, all overridable from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
BACKEND_DIR = REPO_DIR / "backend"
VENV_BIN = REPO_DIR / ".venv" / "bin"
RESULTS_DIR = BENCH_DIR / "results"
LUA_SCRIPT = BENCH_DIR / "lua" / "tasks.lua"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/taskapi_bench"
# BENCH_PROFILE: what is seeded (taskbench/db.py DATASETS), into which database by default, and the
# defaults for the load. `smoke` is `make bench-smoke` (CI): tiny data, a second or so per profile.
PROFILE_DATABASES = {
    "standard": DEFAULT_DATABASE_URL,
    "scale": "postgresql://postgres@127.0.0.1:5432/taskapi_bench_scale",
    # One per run, dropped at the end: CI runs on a shared machine may overlap.
    "smoke": f"postgresql://postgres@127.0.0.1:5432/taskapi_bench_smoke_{os.getpid()}",
}
PROFILE_DEFAULTS: dict[str, dict[str, int]] = {
    "standard": {},
    "scale": {},
    "smoke": {
        "BENCH_DURATION": 1,
        "BENCH_WARMUP": 0,
        "BENCH_ROUNDS": 1,
        "BENCH_CONNECTIONS": 20,
        "BENCH_KEYSET_PAGES": 20,
        # One worker: no multiprocess supervisor, whose 5 s liveness ping kills workers still importing
        # on a loaded CI machine; `make bench` keeps 2.
        "WEB_CONCURRENCY": 1,
    },
}

# The production serving command, shared by our app and the baseline so the
# comparison only differs in the application code. {venv}, {app}, {port} and
# {workers} are filled in; override the whole thing with BENCH_SERVE_CMD.
SERVE_CMD = "{venv}/bin/uvicorn {app} --host 127.0.0.1 --port {port} --workers {workers} --no-access-log"
# Ours runs exactly as in production (`python -m app.serve`: uvicorn workers, JSON access log).
OURS_SERVE_CMD = "env HOST=127.0.0.1 PORT={port} WEB_CONCURRENCY={workers} {venv}/bin/python -m app.serve"
OURS_APP = "app.main:app"  # imported from backend/
BASELINE_APP = "baseline.asgi:app"  # imported from bench/


def _int(name: str, default: int, profile: str = "standard") -> int:
    return int(os.environ.get(name, PROFILE_DEFAULTS.get(profile, {}).get(name, default)))


@dataclass(frozen=True)
class Settings:
    profile: str  # standard | scale | smoke
    database_url: str
    app_database_url: str
    serve_cmd: str
    ours_serve_cmd: str
    workers: int
    baseline_pool_size: int
    duration: int
    warmup: int
    rounds: int
    connections: int
    threads: int
    soak: int
    keyset_pages: int  # the deep keyset page is this many pages (of 20) in
    own_database: bool  # created for this run (the smoke default): dropped at the end
    allow_sql_drift: bool  # report, rather than stop at, statements that differ from the app's

    @property
    def smoke(self) -> bool:
        """`make bench-smoke`: nothing is a target except zero errors and the pre-flight checks."""
        return self.profile == "smoke"

    @classmethod
    def from_env(cls) -> Settings:
        profile = os.environ.get("BENCH_PROFILE", "standard")
        if profile not in PROFILE_DATABASES:
            raise SystemExit(f"BENCH_PROFILE must be one of {', '.join(PROFILE_DATABASES)}, not {profile!r}")
        url = os.environ.get("BENCH_DATABASE_URL", PROFILE_DATABASES[profile])

        def number(name: str, default: int) -> int:
            return _int(name, default, profile)

        return cls(
            profile=profile,
            database_url=url,
            # What the app/alembic get as DATABASE_URL (e.g. a +asyncpg URL).
            app_database_url=os.environ.get("BENCH_APP_DATABASE_URL", url),
            serve_cmd=os.environ.get("BENCH_SERVE_CMD", SERVE_CMD),
            ours_serve_cmd=os.environ.get("BENCH_OURS_SERVE_CMD", OURS_SERVE_CMD),
            workers=number("WEB_CONCURRENCY", 2),
            baseline_pool_size=number("BASELINE_POOL_SIZE", 10),
            duration=number("BENCH_DURATION", 10),
            warmup=number("BENCH_WARMUP", 3),
            rounds=number("BENCH_ROUNDS", 3),
            connections=number("BENCH_CONNECTIONS", 100),
            threads=number("BENCH_THREADS", 2),
            soak=number("SOAK", 0),
            keyset_pages=number("BENCH_KEYSET_PAGES", 5_000),
            allow_sql_drift=os.environ.get("BENCH_ALLOW_SQL_DRIFT", "") == "1",
            own_database=profile == "smoke" and "BENCH_DATABASE_URL" not in os.environ,
        )
