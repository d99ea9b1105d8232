"""The skipped-change race, on real API processes: 8 concurrent writers (creates, PATCHes, deletes)
of one user on two API processes, while a reader polls the change feed on a connection of its own
and keeps a copy from it alone. After the writers stop and the reader catches up, its copy must
equal GET /api/tasks exactly (ids, every field, ETags), round after round.

The same race is then run against two processes started with SYNC_ORDERED_COMMITS=false, the
textbook design without the per-owner lock (app/services/changes.py): change numbers commit out of
order there, and the reader must be seen to lose changes. That second test is what shows the first
one would catch a feed that skips.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support import auth, new_user
from tests.support.feed import FeedCopy
from tests.support.servers import APIServer, api_servers

pytestmark = pytest.mark.slow

WRITERS = 8
ROUND_SECONDS = 1.5
ROUNDS = 4
# Without the mechanism, rounds until a skipped change must have shown (it usually does in the first).
ROUNDS_WITHOUT = 6
HTTP_LIMITS = httpx.Limits(max_connections=WRITERS)


def _servers(
    database_url: str, direct_url: str | None, tmp_path_factory: pytest.TempPathFactory, *, ordered: bool
) -> Iterator[list[APIServer]]:
    settings = {"SYNC_ORDERED_COMMITS": str(ordered).lower(), "DB_MAX_SLOTS_PER_USER": str(WRITERS)}
    if direct_url is not None:
        settings["DATABASE_URL_DIRECT"] = direct_url
    log_dir = tmp_path_factory.mktemp("race-ordered" if ordered else "race-unordered")
    with api_servers(database_url, log_dir, 2, settings=settings) as started:
        yield started


@pytest.fixture(scope="module")
def ordered_servers(
    database_url: str, direct_database_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[APIServer]]:
    """Two API processes as deployed."""
    yield from _servers(database_url, direct_database_url, tmp_path_factory, ordered=True)


@pytest.fixture(scope="module")
def unordered_servers(
    database_url: str, direct_database_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[APIServer]]:
    """Two API processes without the anti-skip mechanism."""
    yield from _servers(database_url, direct_database_url, tmp_path_factory, ordered=False)


@dataclass
class Outcome:
    """One round: what the writers did, how often the reader polled, and how its copy differs."""

    writes: int = 0
    polls: int = 0
    missing: list[str] = field(default_factory=list)  # tasks the copy lacks (a create or undo skipped)
    extra: list[str] = field(default_factory=list)  # tasks the copy still has (a delete skipped)
    stale: list[str] = field(default_factory=list)  # tasks whose fields or ETag differ (a write skipped)

    @property
    def skipped(self) -> int:
        """How many tasks the copy got wrong."""
        return len(self.missing) + len(self.extra) + len(self.stale)


async def race(servers: list[APIServer], seed: int) -> Outcome:
    """One round of the race on a fresh user."""
    headers = auth(new_user())
    outcome = Outcome()
    live: list[str] = []  # ids the writers know to exist (deletes race, so some are gone already)
    stop = asyncio.Event()
    async with (
        httpx.AsyncClient(base_url=servers[0].url, timeout=30, limits=HTTP_LIMITS, headers=headers) as a,
        httpx.AsyncClient(base_url=servers[1].url, timeout=30, limits=HTTP_LIMITS, headers=headers) as b,
        httpx.AsyncClient(base_url=servers[seed % 2].url, timeout=30, headers=headers) as reader,
    ):

        async def writer(number: int) -> None:
            client, rng = (a, b)[number % 2], random.Random(seed * 100 + number)  # noqa: S311  (a test's dice)
            while not stop.is_set():
                roll = rng.random()
                if roll < 0.4 or len(live) < 8:
                    response = await client.post("/api/tasks", json={"title": f"w{number}", "priority": "low"})
                    assert response.status_code == 201, response.text
                    live.append(response.json()["id"])
                elif roll < 0.8:
                    task_id = rng.choice(live)
                    body = {"title": f"w{number} {rng.random():.6f}", "status": rng.choice(["pending", "completed"])}
                    response = await client.patch(f"/api/tasks/{task_id}", json=body)
                    assert response.status_code in (200, 404), response.text
                else:
                    task_id = rng.choice(live)
                    response = await client.delete(f"/api/tasks/{task_id}")
                    assert response.status_code in (204, 404), response.text
                    if task_id in live:
                        live.remove(task_id)
                outcome.writes += 1

        copy = FeedCopy()

        async def poll(limit: int) -> bool:
            response = await reader.get("/api/tasks/changes", params=copy.params(limit))
            assert response.status_code == 200, response.text
            outcome.polls += 1
            return copy.apply(response.json())

        async def read() -> None:
            rng = random.Random(seed)  # noqa: S311
            while not stop.is_set():
                await poll(rng.choice((5, 50, 500)))

        tasks = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
        polling = asyncio.create_task(read())
        await asyncio.sleep(ROUND_SECONDS)
        stop.set()
        await asyncio.gather(*tasks, polling)
        # The writers are done: catch up, as a client would on its next event.
        while await poll(500):
            pass

        listed: dict[str, dict[str, Any]] = {}
        while True:
            page = (await reader.get("/api/tasks", params={"limit": 100, "offset": len(listed)})).json()
            listed.update({task["id"]: task for task in page["items"]})
            if len(listed) >= page["total"]:
                break
        outcome.missing = sorted(set(listed) - set(copy.tasks))
        outcome.extra = sorted(set(copy.tasks) - set(listed))
        for task_id in sorted(set(copy.tasks) & set(listed)):
            etag = (await reader.get(f"/api/tasks/{task_id}")).headers["etag"]
            if copy.tasks[task_id] != listed[task_id] or etag != copy.etags[task_id]:
                outcome.stale.append(task_id)
    return outcome


def report(label: str, number: int, outcome: Outcome, seconds: float) -> None:
    print(
        f"{label} round {number}: {outcome.writes} writes, {outcome.polls} polls in {seconds:.1f} s; "
        f"copy wrong for {outcome.skipped} tasks "
        f"({len(outcome.missing)} missing, {len(outcome.extra)} deleted but kept, {len(outcome.stale)} stale)"
    )


async def test_changes_race_reader_misses_nothing(ordered_servers: list[APIServer], backend: str) -> None:
    for number in range(ROUNDS):
        started = time.monotonic()
        outcome = await race(ordered_servers, number)
        report(f"{backend}, per-owner lock", number, outcome, time.monotonic() - started)
        assert outcome.writes > 30, "the writers barely ran: the round proves little"
        assert outcome.skipped == 0, outcome


async def test_changes_race_without_the_lock_skips_changes(unordered_servers: list[APIServer], backend: str) -> None:
    for number in range(ROUNDS_WITHOUT):
        started = time.monotonic()
        outcome = await race(unordered_servers, number)
        report(f"{backend}, SYNC_ORDERED_COMMITS=false", number, outcome, time.monotonic() - started)
        if outcome.skipped:
            return
    pytest.fail(f"no change was skipped in {ROUNDS_WITHOUT} rounds without the mechanism: the race test proves nothing")
