"""Live change events, per API process: the open event streams by owner, and how they learn that an
owner's tasks changed, whichever process took the write.

- **PostgreSQL with a session to LISTEN on** (`DATABASE_URL_DIRECT`, else `DATABASE_URL` when it is
  not a pooler): one connection per process runs `LISTEN task_changes`. Every write's transaction
  sends `pg_notify` with the owner's new change number (app/services/changes.py), delivered to every
  listening process at commit, in commit order. When that connection fails (a database restart, a
  network cut, a heartbeat that goes unanswered) it is opened again, with backoff, and each open
  stream's owner is looked up once on it, so what committed in between is announced too.
- **A transaction-mode pooler only** (PgBouncer, Neon's `-pooler` host, without
  `DATABASE_URL_DIRECT`): a pooler cannot keep a LISTEN (the session is not ours between
  transactions), so the process instead reads the change counters of the owners with open streams
  every POLL_INTERVAL_S (one small query, only while streams are open), and logs once that
  DATABASE_URL_DIRECT would do better. SQLite works the same way, which also covers several worker
  processes on one database file.
- **Always**: a write announces its number in its own process once it has committed (through
  `SyncPolicy.announce`), so a stream on the process that took the write hears at once.

Announcements only wake streams: a stream sends the newest number it heard, once, whatever the
source, so duplicates (local and LISTEN) cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from app.dburl import connection_failure, engine_spec
from app.errors import TooManyStreams
from app.services.changes import CHANNEL

logger = logging.getLogger("app.events")

POLL_INTERVAL_S = 0.5
# A LISTEN connection that does not answer a ping within this is given up and opened again.
HEARTBEAT_S = 10.0
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 5.0
_HEADS_SQL = "SELECT user_id, seq FROM change_counters WHERE user_id = ANY($1::varchar[])"

ReadHeads = Callable[[list[str]], Awaitable[dict[str, int]]]


class Stream:
    """One open event stream: the newest change number heard for its owner, and its wake-up."""

    __slots__ = ("known", "owner", "stopped", "wake")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.known = 0
        self.stopped = False
        self.wake = asyncio.Event()

    def notify(self, seq: int) -> None:
        """The owner's changes reached `seq`."""
        if seq > self.known:
            self.known = seq
            self.wake.set()

    def stop(self) -> None:
        """End the stream (server shutdown, client gone)."""
        self.stopped = True
        self.wake.set()


class ChangeEvents:
    """The event streams of one process and the source of their announcements (module docstring)."""

    def __init__(
        self,
        *,
        max_streams_per_owner: int,
        keepalive: float,
        listen_url: str | None,
        read_heads: ReadHeads,
        connect_timeout: float = 3.0,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> None:
        self.max_streams_per_owner = max_streams_per_owner
        # Seconds an idle stream may stay silent before a comment line keeps proxies from closing it.
        self.keepalive = keepalive
        self._listen_url = listen_url
        self._read_heads = read_heads
        self._connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self._streams: dict[str, set[Stream]] = {}
        self._task: asyncio.Task[None] | None = None
        # True while the LISTEN connection is up; when it went down (None: it is not down).
        self.listening = False
        self._down_since: float | None = None

    # --- streams --------------------------------------------------------------------------------

    def open(self, owner: str) -> Stream:
        """Register a stream for `owner`, or TooManyStreams when they already have the most allowed."""
        streams = self._streams.setdefault(owner, set())
        if len(streams) >= self.max_streams_per_owner:
            if not streams:
                del self._streams[owner]
            raise TooManyStreams(
                f"You already have {self.max_streams_per_owner} event streams open; close one first.",
                retry_after=5,
            )
        stream = Stream(owner)
        streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        """Forget a stream that ended."""
        streams = self._streams.get(stream.owner)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[stream.owner]

    def publish(self, owner: str, seq: int) -> None:
        """`owner`'s changes reached `seq`: wake their streams in this process."""
        for stream in self._streams.get(owner, ()):
            stream.notify(seq)

    def _publish_all(self, heads: Iterable[tuple[str, int]]) -> None:
        for owner, seq in heads:
            self.publish(owner, seq)

    def stop_streams(self) -> None:
        """End every open stream (the server is shutting down)."""
        for streams in list(self._streams.values()):
            for stream in list(streams):
                stream.stop()

    # --- sources --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (or polling) in the background."""
        self._task = asyncio.create_task(self._listen() if self._listen_url else self._poll(), name="change-events")

    async def aclose(self) -> None:
        """End every stream and stop listening."""
        self.stop_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.poll_interval)
            owners = list(self._streams)
            if not owners:
                continue
            try:
                heads = await self._read_heads(owners)
            except Exception as exc:
                if not failing:
                    logger.warning("live events: cannot read change counters (%s); retrying", _cause(exc))
                failing = True
                continue
            if failing:
                logger.info("live events: reading change counters again")
            failing = False
            self._publish_all(heads.items())

    async def _listen(self) -> None:
        assert self._listen_url is not None
        spec = engine_spec(self._listen_url, connect_timeout=self._connect_timeout)
        url = spec.url
        connect: dict[str, Any] = {
            "host": url.host,
            "port": url.port,
            "user": url.username,
            "password": url.password,
            "database": url.database,
            **spec.connect_args,
        }
        delay = RECONNECT_MIN_S
        while True:
            try:
                connection = await asyncpg.connect(**connect)
            except Exception as exc:
                self._went_down(f"cannot LISTEN ({_cause(exc)}); retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay = RECONNECT_MIN_S
            try:
                await self._listen_on(connection)
            except Exception as exc:
                self._went_down(f"lost the LISTEN connection ({_cause(exc)}); reconnecting")
            finally:
                self.listening = False
                connection.terminate()
            await asyncio.sleep(delay)

    def _went_down(self, message: str) -> None:
        # One warning per outage, however many attempts it takes.
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning("live events: %s", message)

    async def _listen_on(self, connection: Any) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(CHANNEL, self._on_notification)
        # What committed while nobody listened: announce each open stream's owner once. Read on the
        # listening connection, after LISTEN, so nothing falls between the two.
        if self._streams:
            rows = await connection.fetch(_HEADS_SQL, list(self._streams), timeout=self._connect_timeout)
            self._publish_all((row["user_id"], row["seq"]) for row in rows)
        self.listening = True
        if self._down_since is not None:
            logger.info("live events: listening again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
        else:
            logger.info("live events: listening for changes (LISTEN %s)", CHANNEL)
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await lost.wait()
            if not lost.is_set():
                await connection.fetchval("SELECT 1", timeout=self._connect_timeout)
        raise ConnectionError("the connection was closed")

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        seq, _, owner = payload.partition(" ")
        with contextlib.suppress(ValueError):
            self.publish(owner, int(seq))


def _cause(exc: BaseException) -> str:
    return connection_failure(exc) or type(exc).__name__


def listen_url(database_url: str, direct_url: str | None) -> str | None:
    """Where to LISTEN: the direct URL when given, else DATABASE_URL unless it is a pooler or SQLite."""
    if direct_url is not None:
        return direct_url
    spec = engine_spec(database_url, connect_timeout=1.0)
    if spec.is_sqlite or spec.behind_pooler:
        return None
    return database_url
