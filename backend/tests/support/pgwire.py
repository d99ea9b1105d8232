"""A TCP proxy between the app and PostgreSQL that reads the client's side of the wire protocol, to
count round trips for real: every Sync (extended protocol) or Query (simple protocol) message the
client sends makes it wait for the server's ReadyForQuery, so each one is one round trip.

The proxy declines TLS (answers 'N' to SSLRequest and GSSENCRequest, as a server without TLS
would), so the messages are readable; connect to it with plain TCP (`sslmode` unset or `prefer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


@dataclass
class Message:
    """One message the client sent: its type byte and, for Bind and Query, the SQL text it runs."""

    kind: str
    sql: str | None = None
    connection: int = 0  # which proxied connection sent it (numbered from 1)


@dataclass
class WireLog:
    """Every message clients sent through the proxy, in order."""

    messages: list[Message] = field(default_factory=list)

    def mark(self) -> int:
        """A position to count from."""
        return len(self.messages)

    def since(self, mark: int) -> list[Message]:
        """The messages sent after `mark`."""
        return self.messages[mark:]

    def round_trips(self, mark: int) -> int:
        """Round trips since `mark`: Sync and Query messages, each answered by ReadyForQuery."""
        return sum(1 for message in self.since(mark) if message.kind in ("S", "Q"))

    def statements(self, mark: int, connection: int | None = None) -> list[str]:
        """The SQL clients ran (bound, or sent as simple queries) since `mark`, in order; only on
        `connection` if given."""
        return [
            message.sql
            for message in self.since(mark)
            if message.sql is not None and connection in (None, message.connection)
        ]

    def connection_of(self, mark: int, words: str) -> int:
        """The connection that ran the statement containing `words` since `mark`."""
        return next(m.connection for m in self.since(mark) if m.sql is not None and words in m.sql)


async def _read_exactly(reader: asyncio.StreamReader, count: int) -> bytes:
    return await reader.readexactly(count)


async def _client_to_server(
    client: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    server: asyncio.StreamWriter,
    log: WireLog,
    number: int,
) -> None:
    # Startup phase: untyped messages (length, code, ...), possibly TLS/GSS requests first.
    while True:
        length = struct.unpack(">i", await _read_exactly(client, 4))[0]
        body = await _read_exactly(client, length - 4)
        code = struct.unpack(">i", body[:4])[0]
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            client_writer.write(b"N")
            await client_writer.drain()
            continue
        server.write(struct.pack(">i", length) + body)
        await server.drain()
        break
    prepared: dict[bytes, str] = {}  # this connection's prepared statements by name
    while True:
        header = await _read_exactly(client, 5)
        kind, length = chr(header[0]), struct.unpack(">i", header[1:])[0]
        body = await _read_exactly(client, length - 4)
        sql: str | None = None
        if kind == "P":  # Parse: statement name, NUL, query, NUL, ...
            name_end = body.index(b"\0")
            prepared[body[:name_end]] = body[name_end + 1 : body.index(b"\0", name_end + 1)].decode()
        elif kind == "B":  # Bind: portal name, NUL, statement name, NUL, ...
            portal_end = body.index(b"\0")
            sql = prepared.get(body[portal_end + 1 : body.index(b"\0", portal_end + 1)], "?")
        elif kind == "Q":
            sql = body[:-1].decode()
        log.messages.append(Message(kind, sql, number))
        server.write(header + body)
        await server.drain()


async def _server_to_client(server: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
    while data := await server.read(65536):
        client.write(data)
        await client.drain()


@contextlib.asynccontextmanager
async def wire_proxy(host: str, port: int) -> AsyncIterator[tuple[int, WireLog]]:
    """A proxy to PostgreSQL at host:port on a free local port: (its port, the log of what clients sent)."""
    log = WireLog()
    pumps: set[asyncio.Task[None]] = set()
    connections = itertools.count(1)

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, port)
        upstream = asyncio.create_task(
            _client_to_server(client_reader, client_writer, server_writer, log, next(connections))
        )
        downstream = asyncio.create_task(_server_to_client(server_reader, client_writer))
        pumps.update((upstream, downstream))
        with contextlib.suppress(Exception):
            await asyncio.wait((upstream, downstream), return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()
        pumps.difference_update((upstream, downstream))

    proxy = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield proxy.sockets[0].getsockname()[1], log
    finally:
        proxy.close()
        for task in list(pumps):
            task.cancel()
        with contextlib.suppress(Exception):
            await proxy.wait_closed()
