"""HTTP limits of the production server (`python -m app.serve`, app/httpserver.py), over raw sockets.

Each hostile client runs while a second user (tests.servers.Bystander) keeps creating and reading
tasks: every one of those calls must succeed. Timings are printed, never asserted; socket waits have
generous bounds only so that a stuck server fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import auth, new_user
from tests.support.servers import APIServer, Bystander, cpu_seconds, memory_kib

# Real server processes: left out of `make test-fast`. HTTP limits of uvicorn and the app's guards,
# which act before any database work: one database is enough (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.one_database]

READ_TIMEOUT_S = 2  # HTTP_READ_TIMEOUT_S of the servers here, so the slow clients end quickly
IO_LIMIT = 30.0
MAX_HEADER_BYTES = 16 * 1024  # the default
FLOOD_BYTES = 32 * 1024 * 1024
FLOOD_SECONDS = 2.0  # each hostile client keeps starting new floods for this long
CHUNK = b"a" * 65536
RSS_BOUND_KIB = 100 * 1024


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[APIServer]:
    """One API server (one worker process) on the session's database."""
    log = tmp_path_factory.mktemp("httpserver") / "api.log"
    with APIServer(database_url, log, settings={"HTTP_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}) as api:
        yield api


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=IO_LIMIT)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset ends it too)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def problem_of(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), answer
    assert b"x-content-type-options: nosniff" in head.lower(), answer
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status_of(answer)
    return problem


async def in_threads(*jobs: Callable[[], Any]) -> list[Any]:
    """Run blocking socket clients side by side (one thread each) while the event loop serves others."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(await asyncio.gather(*(loop.run_in_executor(pool, job) for job in jobs)))


def flood(port: int, where: str) -> list[tuple[int, bytes]]:
    """For FLOOD_SECONDS, each time on a new connection: a header (or URL) growing to FLOOD_BYTES.

    Returns the bytes sent and the server's answer for each.
    """
    prefix = b"GET /health?q=" if where == "url" else b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: "
    results: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + FLOOD_SECONDS
    while time.monotonic() < deadline:
        sent = 0
        with connect(port) as sock:
            try:
                sock.sendall(prefix)
                while sent < FLOOD_BYTES:
                    sock.sendall(CHUNK)
                    sent += len(CHUNK)
            except OSError:  # reset or broken pipe: the server hung up
                pass
            results.append((sent, read_until_closed(sock)))
    return results


async def test_header_flood_is_431_at_a_bounded_cost(server: APIServer) -> None:
    assert server.process is not None
    pid = server.process.pid  # one worker: uvicorn serves in this very process
    rss_before = memory_kib(pid)["VmRSS"]
    cpu_before = cpu_seconds(pid)
    async with Bystander(server.url):
        started = time.perf_counter()
        clients = await in_threads(
            *(lambda where=where: flood(server.port, where) for where in ("header",) * 3 + ("url",))
        )
        elapsed = time.perf_counter() - started
    memory = memory_kib(pid)
    results = [result for client in clients for result in client]
    print(
        f"{len(results)} floods of up to {FLOOD_BYTES >> 20} MiB from 4 clients in {elapsed:.2f} s: refused after "
        f"at most {max(sent for sent, _ in results):,} bytes sent, {sum(1 for _, answer in results if answer)} "
        f"answered 431, the rest reset; server CPU {cpu_seconds(pid) - cpu_before:.2f} s (bystander included), "
        f"RSS {rss_before >> 10} -> {memory['VmRSS'] >> 10} MiB (peak {memory['VmHWM'] >> 10} MiB)"
    )
    for sent, answer in results:
        assert sent < FLOOD_BYTES  # the server hung up long before the end (what it read was capped)
        # 431 problem+json, unless the client's own unsent bytes made the close a reset that ate it.
        assert answer == b"" or status_of(answer) == 431, answer[:200]
        if answer:
            assert problem_of(answer)["title"] == "Request Header Fields Too Large"
            assert b"connection: close" in answer.lower()
    assert memory["VmHWM"] - rss_before < RSS_BOUND_KIB
    assert server.running


def test_header_just_under_the_limit_is_served(server: APIServer) -> None:
    filler = b"b" * (MAX_HEADER_BYTES - 200)
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + filler + b"\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(sock)
    assert status_of(answer) == 200, answer[:200]


def test_pipelined_oversized_head_is_431_after_the_first_answer(server: APIServer) -> None:
    # The second head arrives in the same read as the first request, so it is checked once parsed.
    first = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    second = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"c" * (MAX_HEADER_BYTES + 1000) + b"\r\n\r\n"
    with connect(server.port) as sock:
        sock.sendall(first + second)
        answer = read_until_closed(sock)
    assert status_of(answer) == 200, answer[:200]
    second_answer = answer[answer.index(b"HTTP/1.1 ", 10) :]
    assert status_of(second_answer) == 431
    assert problem_of(second_answer)["status"] == 431


def test_unparsable_request_is_400_problem(server: APIServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = read_until_closed(sock)
    assert status_of(answer) == 400
    assert problem_of(answer)["detail"] == "The request is not valid HTTP/1.1."


def trickle_head(port: int) -> bytes:
    """Slowloris: a request head one byte at a time, never finished."""
    with connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        deadline = time.monotonic() + IO_LIMIT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                return read_until_closed(sock)
            try:
                sock.sendall(b"a")
            except OSError:
                return read_until_closed(sock)
    raise AssertionError("the server never ended a request head that kept trickling in")


def idle(port: int) -> bytes:
    """A connection that never sends a byte."""
    with connect(port) as sock:
        return read_until_closed(sock)


def stalled_body(port: int, token: dict[str, str], content_type: str, path: str) -> bytes:
    """A request whose body stops 100 bytes short of its Content-Length."""
    body = json.dumps({"title": "never finished"}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token['Authorization']}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    with connect(port) as sock:
        sock.sendall(head + body)
        return read_until_closed(sock)


async def test_slow_and_stalled_clients_time_out(server: APIServer) -> None:
    token = auth(new_user())
    jobs: list[Callable[[], bytes]] = [
        *[lambda: trickle_head(server.port)] * 8,
        *[lambda: idle(server.port)] * 4,
        # The app waits for this body: the middleware answers 408.
        *[lambda: stalled_body(server.port, token, "application/json", "/api/tasks")] * 4,
        # Nothing reads this one (text/plain to an unknown path): 404 at once, then closed once it stalls.
        *[lambda: stalled_body(server.port, token, "text/plain", "/nowhere")] * 2,
    ]
    async with Bystander(server.url):
        started = time.perf_counter()
        answers = await in_threads(*jobs)
        print(f"{len(jobs)} slow clients ended after {time.perf_counter() - started:.2f} s")
    trickled, idled, stalled, ignored = answers[:8], answers[8:12], answers[12:16], answers[16:]
    for answer in trickled:
        assert status_of(answer) == 408, answer[:200]
        assert problem_of(answer)["detail"] == "The request head did not arrive in time."
    assert idled == [b""] * 4  # closed without a word: nothing was asked
    for answer in stalled:
        assert status_of(answer) == 408, answer[:200]
        assert problem_of(answer)["detail"] == "The request body stalled."
        assert b"connection: close" in answer.lower()
    for answer in ignored:
        assert status_of(answer) == 404, answer[:200]  # and read_until_closed returned: closed
    assert '"status":408' in server.log()  # the middleware's 408 is in the access log


def test_connections_over_the_bound_get_503_at_once(tmp_path: Path) -> None:
    settings = {"MAX_CONNECTIONS": "4", "HTTP_READ_TIMEOUT_S": str(IO_LIMIT)}
    with APIServer(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path / "api.log", settings=settings) as api:
        held = [connect(api.port) for _ in range(4)]
        try:
            time.sleep(0.2)  # let the server accept them (no response to wait for)
            with connect(api.port) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = read_until_closed(sock)  # returns: the server closes after its 503
            assert status_of(answer) == 503, answer[:200]
            assert problem_of(answer)["detail"] == "The server has too many open connections; retry shortly."
            assert b"retry-after: " in answer.lower()
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + IO_LIMIT
        while True:  # the held connections are released as the server sees them close
            with connect(api.port) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                answer = read_until_closed(sock)
            if status_of(answer) == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status_of(answer) == 200, answer[:200]
