"""Keeping clients in sync, measured on our app only (the baseline has no feed or events): each
user's current feed cursor for the `changes` profile, and an event-delay probe that runs beside wrk.

The probe: PROBE_USERS users of their own (wrk never writes their tasks), each with one task and
one open event stream. Every PROBE_INTERVAL_S it PATCHes the next user's task and notes when the
request was sent; the delay is from then until that user's stream delivers the event. It is an
upper bound on the delay from the commit (it includes the PATCH's own time in the server); the time
from the PATCH's answer to the event (negative when the event came first) is noted too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from statistics import median

import httpx

from taskbench.workload import Workload, make_token

PROBE_USERS = 10
PROBE_INTERVAL_S = 0.1


def head_cursors(base_url: str, workload: Workload) -> list[str]:
    """Each bench user's cursor after all of their changes (a snapshot: 100 tasks, one answer)."""

    async def fetch() -> list[str]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
            gate = asyncio.Semaphore(20)

            async def one(token: str) -> str:
                async with gate:
                    response = await client.get(
                        "/api/tasks/changes", params={"limit": 1000}, headers={"Authorization": f"Bearer {token}"}
                    )
                response.raise_for_status()
                body = response.json()
                assert not body["has_more"]
                cursor: str = body["cursor"]
                return cursor

            return list(await asyncio.gather(*(one(token) for token in workload.tokens)))

    return asyncio.run(fetch())


@dataclass
class Delays:
    """Event delays in seconds, and what went wrong."""

    seconds: list[float] = field(default_factory=list)
    # From the PATCH's answer to the event (negative: the event came first); the fan-out alone.
    after_answer: list[float] = field(default_factory=list)
    writes: int = 0
    missed: int = 0  # writes whose event did not come within 5 s
    errors: list[str] = field(default_factory=list)

    def percentile(self, share: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")

    def summary(self) -> str:
        if not self.seconds:
            return f"no delays measured ({self.writes} writes, errors: {self.errors[:3]})"
        return (
            f"{len(self.seconds)} events: p50 {median(self.seconds) * 1000:.0f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.0f} ms, max {max(self.seconds) * 1000:.0f} ms, missed {self.missed}; "
            f"after the PATCH's answer: median {median(self.after_answer) * 1000:.0f} ms"
        )


class EventProbe:
    """Runs the probe in a thread of its own (wrk runs as a blocking subprocess meanwhile)."""

    def __init__(self, base_url: str, workload: Workload) -> None:
        self.base_url = base_url
        self.tokens = [make_token(workload.secret, f"bench-probe-{n:02d}") for n in range(PROBE_USERS)]
        self.delays = Delays()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> EventProbe:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"the event probe did not start: {self.delays.errors[:3]}")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        try:
            await self._probe()
        except Exception as exc:
            self.delays.errors.append(repr(exc))
            self._ready.set()

    async def _probe(self) -> None:
        timeout = httpx.Timeout(30, read=None)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout) as client:
            headers = [{"Authorization": f"Bearer {token}"} for token in self.tokens]
            task_ids = []
            for header in headers:
                response = await client.post("/api/tasks", json={"title": "probe"}, headers=header)
                response.raise_for_status()
                task_ids.append(response.json()["id"])
            arrivals: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in headers]
            readers = [
                asyncio.create_task(self._read(header, queue)) for header, queue in zip(headers, arrivals, strict=True)
            ]
            for queue in arrivals:  # the first event comes at once (no Last-Event-ID)
                await asyncio.wait_for(queue.get(), 10)
            self._ready.set()
            turn = 0
            while not self._stop.is_set():
                user = turn % len(headers)
                turn += 1
                while not arrivals[user].empty():
                    arrivals[user].get_nowait()
                sent = time.monotonic()
                response = await client.patch(
                    f"/api/tasks/{task_ids[user]}", json={"title": f"probe {turn}"}, headers=headers[user]
                )
                answered = time.monotonic()
                self.delays.writes += 1
                if response.status_code != 200:
                    self.delays.errors.append(f"PATCH {response.status_code}")
                    continue
                try:
                    arrived = await asyncio.wait_for(arrivals[user].get(), 5)
                    self.delays.seconds.append(arrived - sent)
                    self.delays.after_answer.append(arrived - answered)
                except TimeoutError:
                    self.delays.missed += 1
                await asyncio.sleep(max(0.0, sent + PROBE_INTERVAL_S - time.monotonic()))
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, header: dict[str, str], queue: asyncio.Queue[float]) -> None:
        timeout = httpx.Timeout(30, read=None)
        async with (
            httpx.AsyncClient(base_url=self.base_url, timeout=timeout) as client,
            client.stream("GET", "/api/tasks/events", headers=header) as response,
        ):
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("event: changes"):
                    queue.put_nowait(time.monotonic())
