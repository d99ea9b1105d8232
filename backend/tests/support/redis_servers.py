"""Redis for the rate limit tests: the machine's server (which `.ci/run` starts like PostgreSQL) and
throwaway `redis-server` processes a test owns, stops and starts again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest
import redis

from tests.support.apps import IN_CI
from tests.support.servers import free_port

# The machine's Redis, database 13: a number other projects on the machine are unlikely to use.
# The tests flush it, and use fresh user ids besides.
SHARED_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def redis_reachable(url: str) -> bool:
    """True if a Redis server answers PING at `url`."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def flush(url: str) -> None:
    """Empty the database of `url`."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def shared_redis() -> str:
    """The machine's Redis (flushed), or skip; with CI=true an unreachable Redis fails the test."""
    if not redis_reachable(SHARED_REDIS_URL):
        where = SHARED_REDIS_URL.rpartition("@")[2]
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {where} and CI=true")
        pytest.skip(f"Redis is not reachable at {where}")
    flush(SHARED_REDIS_URL)
    return SHARED_REDIS_URL


class RedisServer:
    """A `redis-server` of the test's own on a free 127.0.0.1 port, keeping nothing on disk.

    `stop()` ends it (clients get connection refused), `start()` brings it back on the same port,
    `pause()`/`resume()` freeze it (SIGSTOP: connections hang, as with an overloaded server).
    With `password` it requires it (`url` carries it); `args` are more `redis-server` options.
    """

    def __init__(self, workdir: Path, *, password: str | None = None, args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is not installed and CI=true")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.args = list(args)
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.workdir), *self.args]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not redis_reachable(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        """End the server (and wait for it)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused server cannot exit
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """Freeze the server: it accepts connections (the kernel does) but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
