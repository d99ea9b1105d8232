"""Real API server processes for tests: `python -m app.serve` (uvicorn) on a free 127.0.0.1 port.

Each server runs in its own process group with stdout/stderr in a log file, so a test can read what
the server logged (errors, access lines) and the teardown can end the server and its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support import BACKEND_DIR, SECRET, auth, new_user

# Passed through to the server so it finds the venv's tools and locale; nothing else leaks in.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class APIServer:
    """The API as production runs it: uvicorn via `python -m app.serve`, `workers` processes."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        workers: int = 1,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.workers = workers
        self.env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
        self.env.update(
            {
                "ENV_FILE": os.devnull,  # never the developer's .env
                "DATABASE_URL": database_url,
                "JWT_SECRET": SECRET,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WEB_CONCURRENCY": str(workers),
                "LOG_LEVEL": "INFO",
                "RATE_LIMIT_ENABLED": "false",  # as in make_settings: tests that need limits set them
                "PYTHONUNBUFFERED": "1",
                **(settings or {}),
            }
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait until `/health` answers (200 or 503) or fail with its log."""
        self.launch()
        self.wait_ready(timeout=timeout)

    def launch(self) -> None:
        """Start the server process without waiting for it (see `wait_ready`)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.serve"],
                cwd=BACKEND_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the workers too
            )

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Wait until the launched server's `/health` answers (200 or 503), or stop it and fail with its log."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the API server exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code in (200, 503):
                        return
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, *, timeout: float = 15.0) -> None:
        """SIGTERM the process group (graceful), SIGKILL it if it is still there after `timeout`."""
        process = self.process
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers left behind in the group (the parent died first) get the same treatment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None

    @property
    def running(self) -> bool:
        """True while the server's main process is alive."""
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything the server wrote so far (JSON log lines on stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, for failure messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def __enter__(self) -> APIServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def api_servers(
    database_url: str, log_dir: Path, count: int, *, workers: int = 1, settings: Mapping[str, str] | None = None
) -> Iterator[list[APIServer]]:
    """`count` independent API servers on one database, all stopped afterwards even on failure."""
    servers = [
        APIServer(database_url, log_dir / f"api-{index}.log", workers=workers, settings=settings)
        for index in range(count)
    ]
    try:
        # Launched together, then awaited: the processes import and start side by side (on two cores
        # that halves the wait), and each still has to answer /health before the test begins.
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB, from /proc."""
    values: dict[str, int] = {}
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bystander:
    """A second, well-behaved user who creates a task and reads it back, over and over, while a
    hostile client runs (`async with Bystander(url):`). On exit every call must have been a 2xx;
    the timings are printed (never asserted: the machine is shared)."""

    def __init__(self, url: str, *, pause: float = 0.05, timeout: float = 30.0) -> None:
        self.url = url
        self.pause = pause
        self.timeout = timeout
        self.calls: list[tuple[str, int, float]] = []  # (what, status, seconds)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _call(
        self, client: httpx.AsyncClient, what: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        started = time.perf_counter()
        response = await client.request(method, path, **kwargs)
        self.calls.append((what, response.status_code, time.perf_counter() - started))
        return response

    async def _run(self) -> None:
        headers = auth(new_user())
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout, headers=headers) as client:
            while True:
                created = await self._call(client, "POST", "POST", "/api/tasks", json={"title": "still here"})
                if created.status_code == 201:
                    await self._call(client, "GET", "GET", f"/api/tasks/{created.json()['id']}")
                if self._stop.is_set():
                    return  # at least one round, and one more after the hostile client finished
                await asyncio.sleep(self.pause)

    async def __aenter__(self) -> Bystander:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
        for what in ("POST", "GET"):
            seconds = sorted(s for w, _, s in self.calls if w == what)
            if seconds:
                print(
                    f"bystander {what}: {len(seconds)} calls, median {statistics.median(seconds) * 1000:.0f} ms, "
                    f"max {seconds[-1] * 1000:.0f} ms"
                )
        assert self.calls, "the bystander made no call"
        failed = [(what, status) for what, status, _ in self.calls if not 200 <= status < 300]
        assert not failed, f"the bystander got {failed}"
