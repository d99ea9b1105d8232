"""A real client of the live events stream (GET /api/tasks/events), as a browser's `fetch` reader
would be: it sends the bearer token (and Last-Event-ID), reads `text/event-stream` frames as they
arrive and notes when each came.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx


@dataclass(frozen=True)
class Frame:
    """One frame of the stream: an event (`event`, `id`, `data`) or a comment line."""

    at: float  # time.monotonic() when it arrived
    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None
    retry: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_event(self) -> bool:
        """True for an event, False for a comment."""
        return self.comment is None


class EventStreamClient:
    """`async with EventStreamClient(url, headers) as stream:` opens the stream; `response` is the answer
    (a non-200 answer is read whole and no frames follow)."""

    def __init__(self, base_url: str, headers: dict[str, str], *, timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout, read=None))
        self._headers = headers
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.response: httpx.Response | None = None
        self.ended_at: float | None = None
        self._context: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStreamClient:
        self._context = self._client.stream("GET", "/api/tasks/events", headers=self._headers)
        self.response = await self._context.__aenter__()
        if self.response.status_code != 200:
            await self.response.aread()
            self.frames.put_nowait(None)
        else:
            self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.response is not None
        lines: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line:
                    lines.append(line)
                    continue
                if lines:
                    self.frames.put_nowait(_frame(lines))
                    lines = []
        except httpx.HTTPError:
            pass
        finally:
            self.ended_at = time.monotonic()
            self.frames.put_nowait(None)

    async def next(self, seconds: float) -> Frame | None:
        """The next frame (None: the stream ended); TimeoutError if none came within `seconds`."""
        async with asyncio.timeout(seconds):
            return await self.frames.get()

    async def next_event(self, seconds: float) -> Frame:
        """The next event, skipping comments; fails if the stream ends, TimeoutError if none comes."""
        deadline = time.monotonic() + seconds
        while True:
            frame = await self.next(max(deadline - time.monotonic(), 0))
            assert frame is not None, "the stream ended"
            if frame.is_event:
                return frame

    async def events_within(self, seconds: float) -> list[Frame]:
        """Every event that arrives within `seconds` (comments skipped); the stream must stay open."""
        events: list[Frame] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    frame = await self.frames.get()
                    assert frame is not None, "the stream ended"
                    if frame.is_event:
                        events.append(frame)
        return events

    async def close(self) -> None:
        """Hang up."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._context is not None:
            await self._context.__aexit__(None, None, None)
            self._context = None
        await self._client.aclose()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()


def _frame(lines: list[str]) -> Frame:
    now = time.monotonic()
    if all(line.startswith(":") for line in lines):
        return Frame(at=now, comment="\n".join(line[1:].strip() for line in lines))
    values: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        values[name] = value.removeprefix(" ")
    return Frame(
        at=now,
        event=values.pop("event", None),
        id=values.pop("id", None),
        data=values.pop("data", None),
        retry=values.pop("retry", None),
        extra=values,
    )
