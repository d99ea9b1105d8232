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

# The production serving command, shared by our app and the baseline so the
# comparison only differs in the application code. {venv}, {app}, {port} and
# {workers} are filled in; override the whole thing with BENCH_SERVE_CMD.
SERVE_CMD = "{venv}/bin/uvicorn {app} --host 127.0.0.1 --port {port} --workers {workers} --no-access-log"
# Ours runs exactly as in production (`python -m app.serve`: uvicorn workers, JSON access log).
OURS_SERVE_CMD = "env HOST=127.0.0.1 PORT={port} WEB_CONCURRENCY={workers} {venv}/bin/python -m app.serve"
OURS_APP = "app.main:app"  # imported from backend/
BASELINE_APP = "baseline.asgi:app"  # imported from bench/


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
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

    @classmethod
    def from_env(cls) -> Settings:
        url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
        return cls(
            database_url=url,
            # What the app/alembic get as DATABASE_URL (e.g. a +asyncpg URL).
            app_database_url=os.environ.get("BENCH_APP_DATABASE_URL", url),
            serve_cmd=os.environ.get("BENCH_SERVE_CMD", SERVE_CMD),
            ours_serve_cmd=os.environ.get("BENCH_OURS_SERVE_CMD", OURS_SERVE_CMD),
            workers=_int("WEB_CONCURRENCY", 2),
            baseline_pool_size=_int("BASELINE_POOL_SIZE", 10),
            duration=_int("BENCH_DURATION", 10),
            warmup=_int("BENCH_WARMUP", 3),
            rounds=_int("BENCH_ROUNDS", 3),
            connections=_int("BENCH_CONNECTIONS", 100),
            threads=_int("BENCH_THREADS", 2),
            soak=_int("SOAK", 0),
        )
