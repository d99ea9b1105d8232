"""The local Neon-style pooler (scripts/pgbouncer: PgBouncer, transaction mode, TLS, SCRAM) for tests.

`pooler_running()` starts it with `start.sh` (idempotent) and stops it afterwards only if this
process started it. `pooled_database()` creates a fresh database owned by the pooler's role on the
PostgreSQL server behind it, migrates it through the direct URL (as DATABASE_URL_DIRECT would) and
hands out the pooled URL in Neon's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from tests.support.apps import migrate

SCRIPTS_DIR = Path(__file__).resolve().parents[3] / "scripts" / "pgbouncer"
# start.sh's own default, which it checks for ownership before use.
RUN_DIR = Path(os.environ.get("TASKAPI_PGBOUNCER_DIR", "/tmp/taskapi-pgbouncer"))  # noqa: S108
POOLER_ROLE = "taskapi"
START_TIMEOUT = 600.0  # the first run may apt-get install pgbouncer


class PoolerUnavailable(RuntimeError):
    """start.sh could not bring the pooler up; the message is its log."""


@dataclass(frozen=True)
class Pooler:
    """A running pooler as start.sh describes it."""

    url: str  # TASKAPI_PGBOUNCER_URL: ...@localhost:6432/taskapi_pooled?sslmode=require
    ca_file: str  # TASKAPI_PGBOUNCER_CA_FILE
    started_here: bool

    def neon_url(self, database: str, *, root_cert: bool = True, **query: str) -> str:
        """The pooled URL of `database` exactly as Neon's console shows one, plus our CA file.

        `channel_binding=require` is what Neon adds; the app accepts and drops it (asyncpg has no
        SCRAM-SHA-256-PLUS). With the CA file, `sslmode=require` verifies the certificate chain (as
        libpq does); `root_cert=False` leaves it out: encrypted, not verified. `query` overrides or
        adds parameters.
        """
        parts = urlsplit(self.url)
        params = {"sslmode": "require", "channel_binding": "require", **query}
        if root_cert:
            params.setdefault("sslrootcert", self.ca_file)
        return urlunsplit((parts.scheme, parts.netloc, f"/{database}", urlencode(params, safe="/"), ""))


def _running_pid() -> int | None:
    try:
        pid = int((RUN_DIR / "pgbouncer.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "pgbouncer" else None


def start_pooler() -> Pooler:
    """Run start.sh and return what it printed; raise PoolerUnavailable with its log if it fails."""
    before = _running_pid()
    try:
        result = subprocess.run(
            ["bash", str(SCRIPTS_DIR / "start.sh")],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
            env={**os.environ, "TASKAPI_PGBOUNCER_DIR": str(RUN_DIR)},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PoolerUnavailable(f"start.sh did not finish: {exc}") from None
    if result.returncode != 0:
        raise PoolerUnavailable(f"start.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    after = _running_pid()
    return Pooler(
        url=values["TASKAPI_PGBOUNCER_URL"],
        ca_file=values["TASKAPI_PGBOUNCER_CA_FILE"],
        started_here=after is not None and after != before,
    )


def stop_pooler() -> None:
    """Run stop.sh (safe shutdown, bounded by its own timeouts)."""
    subprocess.run(
        ["bash", str(SCRIPTS_DIR / "stop.sh")],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "TASKAPI_PGBOUNCER_DIR": str(RUN_DIR)},
    )


@contextlib.contextmanager
def pooler_running(*, required: bool) -> Iterator[Pooler]:
    """The pooler, up for the block; stopped afterwards if (and only if) this call started it.

    When it cannot start, the test fails if `required` (CI=true, or TEST_DATABASE=pooler asked for
    it) and is skipped otherwise (e.g. not root and pgbouncer not installed).
    """
    try:
        pooler = start_pooler()
    except PoolerUnavailable as exc:
        if required:
            pytest.fail(f"the local pooler (scripts/pgbouncer/start.sh) did not start: {exc}")
        pytest.skip(f"the local pooler (scripts/pgbouncer/start.sh) cannot start here: {str(exc)[-300:]}")
    try:
        yield pooler
    finally:
        if pooler.started_here:
            stop_pooler()


def pooler_log() -> str:
    """PgBouncer's log (warnings and errors it saw)."""
    path = RUN_DIR / "pgbouncer.log"
    return path.read_text(errors="replace") if path.exists() else ""


@dataclass(frozen=True)
class PooledDatabase:
    """A migrated database reachable through the pooler."""

    name: str
    url: str  # through the pooler, Neon's shape: what DATABASE_URL is in production
    direct_url: str  # straight to PostgreSQL: what DATABASE_URL_DIRECT is (migrations)


@contextlib.asynccontextmanager
async def pooled_database(pooler: Pooler, admin_url: str) -> AsyncIterator[PooledDatabase]:
    """A fresh database owned by the pooler's role, migrated directly, dropped afterwards.

    `admin_url` is a superuser URL of the PostgreSQL server behind the pooler.
    """

    name = f"taskapi_pooled_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{POOLER_ROLE}"')
    finally:
        await admin.close()
    server = urlsplit(admin_url)
    direct_url = f"postgresql://{POOLER_ROLE}@{server.hostname}:{server.port or 5432}/{name}"
    try:
        await asyncio.to_thread(migrate, direct_url)
        yield PooledDatabase(name=name, url=pooler.neon_url(name), direct_url=direct_url)
    finally:
        admin = await asyncpg.connect(admin_url, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
