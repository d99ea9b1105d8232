"""`python -m app.serve` as production runs it: a real uvicorn process on a free 127.0.0.1 port.

SIGTERM lets a request that is still uploading its body finish with 201 while the server stops
accepting connections; WEB_CONCURRENCY starts that many worker processes; every log line is JSON.
Nothing here measures time: each step waits for an observable event (a 100 Continue, a log line).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty, Queue
from typing import IO, Any

import pytest

from app.config import Settings
from tests.support import BACKEND_DIR, SECRET, auth, new_user
from tests.support.apps import migrate

# Subprocesses and real servers: left out of `make test-fast`.
pytestmark = pytest.mark.slow

# Generous bounds so a stuck server fails the test instead of hanging it; never asserted on.
STARTUP_LIMIT = 60.0
IO_LIMIT = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _pump(stream: IO[str], lines: Queue[str]) -> None:
    for line in stream:
        lines.put(line)


class Server:
    """A running `python -m app.serve` and its stderr, parsed as JSON lines."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.log: list[dict[str, Any]] = []
        self._lines: Queue[str] = Queue()
        assert process.stderr is not None
        self._pump = threading.Thread(target=_pump, args=(process.stderr, self._lines), daemon=True)
        self._pump.start()

    def wait_for(self, what: str, matches: Callable[[dict[str, Any]], bool], count: int = 1) -> list[dict[str, Any]]:
        """Read the log until `count` lines match; every line must be a JSON object."""
        found = [line for line in self.log if matches(line)]
        while len(found) < count:
            try:
                raw = self._lines.get(timeout=STARTUP_LIMIT)
            except Empty:
                raise AssertionError(f"no {what} in the server log:\n{self.log}") from None
            line = json.loads(raw)  # a non-JSON line fails the test here
            assert isinstance(line, dict), raw
            self.log.append(line)
            if matches(line):
                found.append(line)
        return found

    def finish(self) -> list[dict[str, Any]]:
        """Wait for the process to exit, then read the rest of its log."""
        self.process.wait(timeout=IO_LIMIT)
        self._pump.join(timeout=IO_LIMIT)
        self.wait_for("end of log", lambda _: True, count=len(self.log) + self._lines.qsize())
        return self.log

    def messages(self, prefix: str) -> Callable[[dict[str, Any]], bool]:
        return lambda line: str(line.get("message", "")).startswith(prefix)


@contextmanager
def serving(tmp_path: Path, workers: int) -> Iterator[Server]:
    """The server on a migrated SQLite database, with only the test's settings in its environment."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    migrate(url)
    port = _free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in Settings.model_fields and k != "WEB_CONCURRENCY"}
    env = {
        **inherited,
        "ENV_FILE": "/dev/null",
        "DATABASE_URL": url,
        "JWT_SECRET": SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "LOG_LEVEL": "INFO",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.serve"],
        cwd=BACKEND_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process, port)
    try:
        # Each worker runs the lifespan; "Uvicorn running on" comes once the socket listens.
        server.wait_for("startup", server.messages("Application startup complete"), count=workers)
        server.wait_for("listening", server.messages("Uvicorn running on"))
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=IO_LIMIT)


def _refused_soon(port: int) -> bool:
    deadline = time.monotonic() + IO_LIMIT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=IO_LIMIT).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.02)
    return False


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("workers", [1, 2], ids=["one_worker", "two_workers"])
def test_shutdown_completes_inflight_request(tmp_path: Path, workers: int) -> None:
    body = json.dumps({"title": "Survive the deploy", "priority": "high"}).encode()
    head = (
        "POST /api/tasks HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: {auth(new_user())['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with serving(tmp_path, workers) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(IO_LIMIT)
        sock.sendall(head)
        # uvicorn answers 100 Continue when the app first asks for the body: the request is in flight.
        assert _read_head(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body[:10])

        server.process.send_signal(signal.SIGTERM)
        server.wait_for("shutdown", server.messages("Shutting down"), count=workers)
        if workers == 1:
            # The listening socket closes right after "Shutting down" is logged (with several workers
            # the supervisor still holds it): new connections are refused from then on.
            assert _refused_soon(server.port)

        sock.sendall(body[10:])
        response = _read_all(sock)
        log = server.finish()

    status_line, _, rest = response.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 201 Created", response
    assert b"connection: close" in headers.lower()
    assert json.loads(payload)["title"] == "Survive the deploy"
    # The server finished on its own (SIGTERM re-raised after a clean shutdown, or exit 0).
    assert server.process.returncode in (0, -signal.SIGTERM)
    access = [line for line in log if line.get("logger") == "app.access"]
    assert [(line["method"], line["path"], line["status"]) for line in access] == [("POST", "/api/tasks", 201)]
    assert all(len(line["request_id"]) >= 1 for line in access)


def _children(pid: int) -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            # Field 4 is the parent pid; the command name (field 2) may contain spaces, so split after it.
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                children.add(int(entry.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_start_two_workers_with_web_concurrency(tmp_path: Path) -> None:
    with serving(tmp_path, workers=2) as server:
        started = server.wait_for("worker start", server.messages("Started server process"), count=2)
        worker_pids = {int(line["message"].rpartition("[")[2].rstrip("]")) for line in started}
        assert len(worker_pids) == 2
        assert server.process.pid not in worker_pids
        assert worker_pids <= _children(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        log = server.finish()
    assert server.process.returncode in (0, -signal.SIGTERM)
    messages = [str(line["message"]) for line in log]
    finished = {int(m.rpartition("[")[2].rstrip("]")) for m in messages if m.startswith("Finished server process")}
    assert finished == worker_pids  # each worker shut down gracefully, then the supervisor stopped
    assert any(m.startswith("Stopping parent process") for m in messages)
