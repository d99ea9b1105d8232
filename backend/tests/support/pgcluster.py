"""A throwaway PostgreSQL cluster owned by one test: `initdb` into a temporary directory, its own
port on 127.0.0.1, started and stopped (or crashed) with `pg_ctl`. Never the shared server.

`initdb` and `postgres` refuse to run as root, so as root every command runs as the `postgres` OS
user (`runuser -u postgres --`); as any other user they run directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import asyncpg
import pytest

from tests.support.apps import IN_CI, migrate
from tests.support.servers import free_port

# The newest installed server's binaries, or TEST_PG_BIN.
_CANDIDATES = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
PG_BIN = Path(os.environ.get("TEST_PG_BIN") or (_CANDIDATES[0] if _CANDIDATES else "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"
COMMAND_TIMEOUT = 60.0


class ClusterUnavailable(RuntimeError):
    """This machine cannot run a private cluster (no binaries, no `postgres` user)."""


def cluster_support_problem() -> str | None:
    """Why a private cluster cannot be created here, or None when it can."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        return f"no initdb/pg_ctl in {PG_BIN} (set TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root and there is no {PG_OS_USER!r} OS user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is not installed"
    return None


class PostgresCluster:
    """One private PostgreSQL server: `init()`, `start()`, `crash()`, `start()` again, `destroy()`."""

    def __init__(self) -> None:
        problem = cluster_support_problem()
        if problem is not None:
            raise ClusterUnavailable(problem)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="taskapi-pgcluster-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """A URL for `database` on this cluster (trust auth, user postgres)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_OS_USER, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, cwd=self.root
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}")

    def init(self) -> None:
        """`initdb` a fresh cluster (trust auth on 127.0.0.1 only)."""
        if os.geteuid() == 0:
            # mkdtemp made it 0700 root: hand it to the OS user the server runs as.
            account = pwd.getpwnam(PG_OS_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        self._check(result, "initdb")

    def start(self) -> None:
        """Start (or restart after a crash, which replays the WAL) and wait until it accepts connections."""
        options = " ".join(
            (
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c shared_buffers=16MB",
                "-c max_connections=60",
                "-c fsync=on",
                "-c synchronous_commit=on",
            )
        )
        result = self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options, "-w", "-t", "30", "start"
        )
        self._check(result, "pg_ctl start")

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every server process exits at once, no checkpoint (a crash)."""
        self._check(self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30", "stop"), "crash")

    def stop(self) -> None:
        """Stop if running (fast shutdown), falling back to SIGKILL of the postmaster."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        result = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "20", "stop")
        if result.returncode != 0 and pid_file.exists():
            with contextlib.suppress(ValueError, OSError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def destroy(self) -> None:
        """Stop and remove every file of the cluster."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.destroy()


@contextlib.asynccontextmanager
async def migrated_cluster() -> AsyncIterator[PostgresCluster]:
    """A private, running PostgreSQL cluster with a migrated `taskapi` database, destroyed afterwards.

    Skips the test when no cluster can be made here, except with CI=true, where that fails it.
    """
    problem = cluster_support_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"cannot create a private PostgreSQL cluster and CI=true: {problem}")
        pytest.skip(f"cannot create a private PostgreSQL cluster: {problem}")
    cluster = PostgresCluster()
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        admin = await asyncpg.connect(cluster.admin_url, timeout=10)
        try:
            await admin.execute("CREATE DATABASE taskapi")
        finally:
            await admin.close()
        await asyncio.to_thread(migrate, cluster.url("taskapi"))
        yield cluster
    finally:
        await asyncio.to_thread(cluster.destroy)
