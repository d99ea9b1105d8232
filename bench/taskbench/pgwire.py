"""A recording PostgreSQL wire proxy: what a server under test really sends to the database.

It sits between a server and PostgreSQL (127.0.0.1, a free port), forwards every byte unchanged and
notes, per client connection, each statement executed (extended protocol: the Parse that named it,
then each Bind of it; simple protocol: the Query text, e.g. BEGIN/COMMIT) and each round trip the
client waits for (a Sync or a simple Query). SSL/GSS encryption requests are declined (answered
"N" here, as a server without SSL would), so the traffic stays readable; it is only ever used on
127.0.0.1 for the statement check (taskbench/sqlcheck.py), never for the measured runs.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass, field

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104


@dataclass(frozen=True)
class WireEvent:
    connection: int
    kind: str  # "execute" (extended protocol), "query" (simple protocol), "sync"
    sql: str = ""


@dataclass
class WireRecorder:
    """Run with `with WireRecorder(host, port) as proxy:`; point the server at `proxy.port`."""

    upstream_host: str
    upstream_port: int
    port: int = 0
    events: list[WireEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _connections: int = 0

    def __enter__(self) -> WireRecorder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("wire proxy did not start")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def mark(self) -> int:
        """A position in the event list, for `since`."""
        with self._lock:
            return len(self.events)

    def since(self, mark: int) -> list[WireEvent]:
        """Every event after `mark`."""
        with self._lock:
            return list(self.events[mark:])

    def _note(self, event: WireEvent) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        conn_id = self._connections
        up_reader: asyncio.StreamReader | None = None
        up_writer: asyncio.StreamWriter | None = None
        try:
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                rest = await reader.readexactly(length - 8)
                if code in (SSL_REQUEST, GSS_REQUEST):
                    writer.write(b"N")  # no encryption: the client goes on in plain text
                    await writer.drain()
                    continue
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
                up_writer.write(head + rest)
                break
            back = asyncio.ensure_future(_pump(up_reader, writer))
            try:
                await self._client_to_server(conn_id, reader, up_writer)
            finally:
                back.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _client_to_server(self, conn_id: int, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        prepared: dict[bytes, str] = {}
        while True:
            head = await reader.readexactly(5)
            kind = head[:1]
            (length,) = struct.unpack("!i", head[1:])
            body = await reader.readexactly(length - 4)
            if kind == b"P":  # Parse: statement name, query
                name, query, _ = body.split(b"\0", 2)
                prepared[name] = query.decode()
            elif kind == b"B":  # Bind: portal, statement name
                _, name, _ = body.split(b"\0", 2)
                self._note(WireEvent(conn_id, "execute", prepared.get(name, "?")))
            elif kind == b"Q":
                self._note(WireEvent(conn_id, "query", body.rstrip(b"\0").decode()))
            elif kind == b"S":
                self._note(WireEvent(conn_id, "sync"))
            up.write(head + body)
            await up.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
