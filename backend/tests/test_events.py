"""Live change events (GET /api/tasks/events) on real API processes: a write through one process
reaches a stream on another within a second (delays printed), only the caller's changes, catch-up
with Last-Event-ID, keepalive comments (and no read deadline on a long stream), the per-user stream
limit, the end of the stream at token expiry and at server shutdown, and events resuming after
PostgreSQL restarts under a running API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import assert_problem, auth, bearer, hs256_token, new_user
from tests.support.apps import TEST_THROUGH_POOLER
from tests.support.pgcluster import PostgresCluster, migrated_cluster
from tests.support.servers import APIServer, api_servers
from tests.support.sse import EventStreamClient, Frame

pytestmark = pytest.mark.slow

KEEPALIVE_S = 0.5
MAX_STREAMS = 2
DELIVERY_LIMIT_S = 1.0
SETTINGS = {
    "SYNC_KEEPALIVE_S": str(KEEPALIVE_S),
    "SYNC_MAX_STREAMS_PER_USER": str(MAX_STREAMS),
    # Far shorter than the streams below last: a stream must not be cut by the read deadline.
    "HTTP_READ_TIMEOUT_S": "1",
}


@pytest.fixture(scope="module")
def servers(
    database_url: str, direct_database_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[APIServer]]:
    """Two API processes (A and B) on the session's database; through the pooler they LISTEN on the
    direct URL, as DATABASE_URL_DIRECT says in production."""
    settings = dict(SETTINGS)
    if direct_database_url is not None:
        settings["DATABASE_URL_DIRECT"] = direct_database_url
    with api_servers(database_url, tmp_path_factory.mktemp("events"), 2, settings=settings) as started:
        yield started


@pytest.fixture
async def clients(servers: list[APIServer]) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A plain HTTP client for each process; afterwards, neither logged an error."""
    logged = [len(server.log()) for server in servers]
    async with (
        httpx.AsyncClient(base_url=servers[0].url, timeout=10) as a,
        httpx.AsyncClient(base_url=servers[1].url, timeout=10) as b,
    ):
        yield a, b
    for server, offset in zip(servers, logged, strict=True):
        assert '"level":"ERROR"' not in server.log()[offset:], server.log_tail()


async def create(client: httpx.AsyncClient, headers: dict[str, str], title: str = "a task") -> dict[str, object]:
    response = await client.post("/api/tasks", json={"title": title}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def feed_cursor(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.get("/api/tasks/changes", headers=headers)
    assert response.status_code == 200
    cursor: str = response.json()["cursor"]
    return cursor


def fields(frame: Frame) -> tuple[str | None, str | None, str | None]:
    return frame.event, frame.id, frame.data


def assert_changes_event(frame_event: str | None, frame_id: str | None, data: str | None) -> str:
    assert frame_event == "changes"
    assert frame_id is not None and data is not None
    assert json.loads(data) == {"cursor": frame_id}
    return frame_id


async def test_events_write_on_a_reaches_stream_on_b_within_a_second(
    servers: list[APIServer], clients: tuple[httpx.AsyncClient, httpx.AsyncClient], backend: str
) -> None:
    a, _ = clients
    headers = auth(new_user())
    async with EventStreamClient(servers[1].url, headers) as stream:
        assert stream.response is not None and stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert stream.response.headers["cache-control"] == "no-store"
        # No Last-Event-ID: the client's state is unknown, so an event comes at once.
        assert_changes_event(*fields(await stream.next_event(DELIVERY_LIMIT_S)))
        delays = []
        task = await create(a, headers)
        cursor = assert_changes_event(*fields(await stream.next_event(5)))
        answered_delays = []
        for n in range(6):
            # From sending the write (an upper bound on the delay from its commit, which includes the
            # write's own time) and from its answer (the commit came before it).
            started = time.monotonic()
            if n == 5:
                assert (await a.delete(f"/api/tasks/{task['id']}", headers=headers)).status_code == 204
            elif n % 2:
                assert (await a.patch(f"/api/tasks/{task['id']}", json={"title": f"v{n}"}, headers=headers)).is_success
            else:
                task = await create(a, headers, f"task {n}")
            answered = time.monotonic()
            event = await stream.next_event(5)
            delays.append(event.at - started)
            answered_delays.append(event.at - answered)
            new_cursor = assert_changes_event(*fields(event))
            assert new_cursor != cursor
            # The event's cursor covers the write: the feed from the previous one has it.
            changed = (await a.get("/api/tasks/changes", params={"since": cursor}, headers=headers)).json()
            assert [change.get("id") or change["task"]["id"] for change in changed["changes"]] == [task["id"]]
            assert changed["cursor"] == new_cursor
            cursor = new_cursor
    print(
        f"{backend}: write sent to A -> event on B: median {statistics.median(delays) * 1000:.0f} ms, "
        f"max {max(delays) * 1000:.0f} ms over {len(delays)} writes; after the write's answer: "
        f"median {statistics.median(answered_delays) * 1000:.0f} ms, max {max(answered_delays) * 1000:.0f} ms"
    )
    assert max(answered_delays) < DELIVERY_LIMIT_S


async def test_events_write_on_the_same_process_arrives_at_once(
    servers: list[APIServer], clients: tuple[httpx.AsyncClient, httpx.AsyncClient], backend: str
) -> None:
    _, b = clients
    headers = auth(new_user())
    async with EventStreamClient(servers[1].url, headers) as stream:
        await stream.next_event(DELIVERY_LIMIT_S)
        started = time.monotonic()
        await create(b, headers)
        event = await stream.next_event(DELIVERY_LIMIT_S)
    print(f"{backend}: write sent to B -> event on B: {(event.at - started) * 1000:.0f} ms")


async def test_events_only_the_callers_changes(
    servers: list[APIServer], clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, _ = clients
    alice, bob = auth(new_user()), auth(new_user())
    async with EventStreamClient(servers[1].url, bob) as bobs:
        await bobs.next_event(DELIVERY_LIMIT_S)
        task = await create(a, alice, "alice's")
        await a.patch(f"/api/tasks/{task['id']}", json={"status": "completed"}, headers=alice)
        await a.delete(f"/api/tasks/{task['id']}", headers=alice)
        assert await bobs.events_within(1.5) == []
        await create(a, bob, "bob's")
        await bobs.next_event(DELIVERY_LIMIT_S)


async def test_events_last_event_id_catches_up_at_once(
    servers: list[APIServer], clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, _ = clients
    headers = auth(new_user())
    await create(a, headers)
    cursor = await feed_cursor(a, headers)
    # Up to date: no event, only keepalive comments.
    async with EventStreamClient(servers[1].url, {**headers, "Last-Event-ID": cursor}) as stream:
        assert await stream.events_within(1.0) == []
    # Something changed while disconnected: an event at once on reconnecting.
    await create(a, headers)
    started = time.monotonic()
    async with EventStreamClient(servers[1].url, {**headers, "Last-Event-ID": cursor}) as stream:
        event = await stream.next_event(DELIVERY_LIMIT_S)
    print(f"catch-up event {(event.at - started) * 1000:.0f} ms after connecting")
    new_cursor = assert_changes_event(*fields(event))
    assert new_cursor == await feed_cursor(a, headers)
    # The event's id works as the next Last-Event-ID; a garbled one means "state unknown": an event.
    async with EventStreamClient(servers[0].url, {**headers, "Last-Event-ID": new_cursor}) as stream:
        assert await stream.events_within(1.0) == []
    async with EventStreamClient(servers[0].url, {**headers, "Last-Event-ID": "garbled"}) as stream:
        await stream.next_event(DELIVERY_LIMIT_S)


async def test_events_keepalive_comments_and_no_read_deadline(servers: list[APIServer]) -> None:
    headers = auth(new_user())
    async with EventStreamClient(servers[0].url, headers) as stream:
        opened = time.monotonic()
        await stream.next_event(DELIVERY_LIMIT_S)
        comments = []
        # Three times HTTP_READ_TIMEOUT_S (1 s) of silence from the client.
        while time.monotonic() - opened < 3.0:
            frame = await stream.next(2 * KEEPALIVE_S + 1)
            assert frame is not None, "the stream was cut"
            assert not frame.is_event
            comments.append(frame)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(comments)]
    print(f"{len(comments)} keepalive comments in 3 s, gaps {min(gaps):.2f}-{max(gaps):.2f} s")
    assert {frame.comment for frame in comments} == {"keepalive"}
    assert len(comments) >= 3 and max(gaps) < 3 * KEEPALIVE_S


async def test_events_stream_limit_per_user_is_429(servers: list[APIServer]) -> None:
    user = new_user()
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(MAX_STREAMS):
            stream = await streams.enter_async_context(EventStreamClient(servers[0].url, auth(user)))
            await stream.next_event(DELIVERY_LIMIT_S)
        async with EventStreamClient(servers[0].url, auth(user)) as refused:
            assert refused.response is not None
            body = assert_problem(refused.response, 429)
            assert refused.response.headers["retry-after"].isdigit()
            assert "event streams" in body["detail"]
        # Someone else is not affected.
        async with EventStreamClient(servers[0].url, auth(new_user())) as other:
            await other.next_event(DELIVERY_LIMIT_S)
    # Once closed, the slots are free again (the server notices the hang-up within moments).
    deadline = time.monotonic() + 5
    while True:
        async with EventStreamClient(servers[0].url, auth(user)) as again:
            assert again.response is not None
            if again.response.status_code == 200:
                await again.next_event(DELIVERY_LIMIT_S)
                break
            assert time.monotonic() < deadline, "closed streams still count against the limit"
        await asyncio.sleep(0.1)


async def test_events_stream_ends_when_the_token_expires(servers: list[APIServer]) -> None:
    token = hs256_token(new_user(), exp_in=2)
    async with EventStreamClient(servers[0].url, bearer(token)) as stream:
        opened = time.monotonic()
        await stream.next_event(DELIVERY_LIMIT_S)
        last = None
        while (frame := await stream.next(5)) is not None:
            last = frame
        lasted = time.monotonic() - opened
    print(f"the stream ended {lasted:.2f} s after opening with a token valid for 2 s")
    assert last is not None and last.comment == "token expired"
    assert 0.5 < lasted < 4.0  # `exp` is in whole seconds


async def test_events_shutdown_closes_streams_promptly(
    database_url: str, direct_database_url: str | None, tmp_path: Path
) -> None:
    settings = {} if direct_database_url is None else {"DATABASE_URL_DIRECT": direct_database_url}
    server = APIServer(database_url, tmp_path / "api.log", settings=settings)
    await asyncio.to_thread(server.start)
    try:
        async with EventStreamClient(server.url, auth(new_user())) as stream:
            await stream.next_event(DELIVERY_LIMIT_S)
            assert server.process is not None
            stopping = time.monotonic()
            os.killpg(server.process.pid, signal.SIGTERM)
            while await stream.next(5) is not None:
                pass
            ended = time.monotonic() - stopping
            await asyncio.to_thread(server.process.wait, 10)
            exited = time.monotonic() - stopping
    finally:
        await asyncio.to_thread(server.stop)
    print(f"SIGTERM: stream ended after {ended:.2f} s, server exited after {exited:.2f} s")
    assert ended < 3.0 and exited < 10.0  # the graceful limit is 30 s


@pytest.mark.skipif(not TEST_THROUGH_POOLER, reason="only through the pooler (make test-pooler)")
async def test_events_through_a_pooler_without_direct_url_are_polled(database_url: str, tmp_path: Path) -> None:
    with api_servers(database_url, tmp_path, 2, settings=SETTINGS) as (a, b):
        assert "a pooler, which cannot LISTEN" in a.log()
        headers = auth(new_user())
        async with EventStreamClient(b.url, headers) as stream, httpx.AsyncClient(base_url=a.url) as client:
            await stream.next_event(DELIVERY_LIMIT_S)
            started = time.monotonic()
            await create(client, headers)
            event = await stream.next_event(DELIVERY_LIMIT_S)
    print(
        f"pooler, no DATABASE_URL_DIRECT: write sent to A -> event on B (polled): {(event.at - started) * 1000:.0f} ms"
    )


# --- PostgreSQL restarts under a running API ------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[PostgresCluster]:
    """A private, running PostgreSQL cluster with a migrated `taskapi` database."""
    async with migrated_cluster() as cluster:
        yield cluster


@pytest.mark.postgres_only
async def test_events_resume_after_the_database_restarts(cluster: PostgresCluster, tmp_path: Path) -> None:
    settings = {**SETTINGS, "DB_CONNECT_TIMEOUT": "2"}
    with api_servers(cluster.url("taskapi"), tmp_path, 2, settings=settings) as (a, b):
        headers = auth(new_user())
        async with EventStreamClient(b.url, headers) as stream, httpx.AsyncClient(base_url=a.url, timeout=10) as client:
            await stream.next_event(DELIVERY_LIMIT_S)
            await asyncio.to_thread(cluster.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(cluster.start)
            restarted = time.monotonic()
            # The first write may meet a connection the restart killed (503): retry as a client would.
            while True:
                started = time.monotonic()
                response = await client.post("/api/tasks", json={"title": "after"}, headers=headers)
                if response.status_code == 201:
                    break
                assert response.status_code == 503, response.text
                assert started - restarted < 15, "the API did not recover"
                await asyncio.sleep(0.2)
            # The stream stayed open through the outage; the listener reconnects by itself.
            event = await stream.next_event(10)
            delay = event.at - started
        log = b.log()
    print(f"after a restart: write {started - restarted:.2f} s after the start, event {delay * 1000:.0f} ms later")
    assert "live events: lost the LISTEN connection" in log and "live events: listening again" in log
    assert delay < 6.0  # at worst the listener's longest backoff, then its catch-up read
