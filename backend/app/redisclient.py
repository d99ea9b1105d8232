"""A lean asyncio Redis client for one job: running one Lua script, many times, over one connection.

The rate limits (app/ratelimit.py) send Redis their hits in batches, each one script call. Through
redis-py's asyncio client each call cost the worker more CPU than the rest of the request's limit check many
times over (connection pool, command packing in Python, a task and stream reads per reply), so the
script runs here instead, on what asyncio offers directly:

- **One connection** (`asyncio.Protocol`: TCP, TLS for `rediss://`, or a Unix socket), opened on
  first use and after a failure, authenticated (`AUTH [username] password`) and on its database
  (`SELECT`) before any call goes out on it; the script is loaded (`SCRIPT LOAD`) in the same round
  trip.
- **Pipelined.** Calls are written as they come (RESP2 `EVALSHA`), without waiting for earlier
  answers; Redis answers in order, so each reply resolves the oldest call waiting. Replies are parsed
  as bytes arrive, however they are split across reads.
- **NOSCRIPT** (the script cache was flushed, or a failover): the call is sent again as `EVAL`,
  which also caches the script again.
- **Bounded.** Every call has an answer (`done` is called exactly once) within `timeout` seconds of
  `run`, connecting included: the reply, or an exception (the call failed; nothing says whether
  Redis ran it). A call that times out closes the connection (a Redis that does not answer one call
  answers none); a dropped connection fails the calls on it; an error reply other than NOSCRIPT
  fails its call and closes the connection too (the next call reconnects, authenticating again).

The URL (`parse_url`) means what it means to redis-py: `redis://[[username]:password@]host[:port][/db]`,
`rediss://` (TLS, certificate and host name verified unless `ssl_cert_reqs` says otherwise), query
parameters `db` and the `ssl_*` ones below; and `redis+unix:///path/to/socket[?db=N]` (`limits`'
name for a Unix socket). Anything else a URL might ask for (redis-py's other options, a database
that is not a number) is refused when the URL is read, with one clear message that never holds the
password, rather than ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

# A reply: int, bytes, None (nil), a list of replies, or a ReplyError (an error reply, as a value).
Reply = object
# What `run` calls with the outcome: a reply, or an Exception (the call failed).
Done = Callable[[Reply], None]

_TLS_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TLS_PARAMETERS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ReplyError(Exception):
    """An error reply from Redis (e.g. `NOSCRIPT No matching script`, `WRONGPASS ...`)."""


class ProtocolError(ConnectionError):
    """Redis sent something that is not a RESP2 reply to a call of ours."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in: what `parse_url` reads from a storage URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a Unix socket instead of host and port
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        # Never the password (this can end up in a log or a traceback).
        where = self.path or f"{self.host}:{self.port}"
        return f"RedisAddress({where}, db={self.db}, tls={self.tls is not None})"


def parse_url(url: str) -> RedisAddress:
    """The address in a `redis://`, `rediss://` or `redis+unix://` URL (see the module docstring).

    ValueError, with a message that never contains the password, if the URL asks for anything this
    client does not do.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "redis+unix"):
        raise ValueError("a Redis URL starts with redis://, rediss:// or redis+unix://")
    query: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if name != "db" and not (parts.scheme == "rediss" and name in _TLS_PARAMETERS):
            raise ValueError(
                f"the Redis URL parameter {name!r} is not supported here "
                f"(supported: db{', ' + ', '.join(_TLS_PARAMETERS) if parts.scheme == 'rediss' else ''})"
            )
        query[name] = unquote(values[-1])
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if username is not None and password is None:
        # redis-py would send AUTH with an empty password; Redis has no such login.
        raise ValueError("a Redis URL with a user name needs its password: redis://user:password@host")
    db = 0
    path_db = parts.path.strip("/") if parts.scheme != "redis+unix" else ""
    try:
        if "db" in query:
            db = int(query["db"])
        elif path_db:
            db = int(unquote(path_db))
    except ValueError:
        raise ValueError("the Redis database (the URL's path or db=) must be a number") from None
    if db < 0:
        raise ValueError("the Redis database (the URL's path or db=) must be 0 or more")
    if parts.scheme == "redis+unix":
        if not parts.path:
            raise ValueError("a redis+unix:// URL needs the socket's path: redis+unix:///path/to/redis.sock")
        return RedisAddress(path=unquote(parts.path), db=db, username=username, password=password)
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the Redis URL's port is not a number from 0 to 65535") from None
    tls = _tls_context(query) if parts.scheme == "rediss" else None
    return RedisAddress(parts.hostname or "127.0.0.1", port, None, db, username, password, tls)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    """The TLS context for `rediss://`, as redis-py builds it from the same URL parameters."""
    cert_reqs = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _TLS_CERT_REQS:
        raise ValueError("ssl_cert_reqs in the Redis URL must be none, optional or required")
    check_hostname = query.get("ssl_check_hostname", "true").lower()
    if check_hostname not in _TRUE + _FALSE:
        raise ValueError("ssl_check_hostname in the Redis URL must be true or false")
    context = ssl.create_default_context()
    context.check_hostname = check_hostname in _TRUE and cert_reqs != "none"
    context.verify_mode = _TLS_CERT_REQS[cert_reqs]
    try:
        if "ssl_certfile" in query or "ssl_keyfile" in query:
            context.load_cert_chain(query.get("ssl_certfile") or query["ssl_keyfile"], query.get("ssl_keyfile"))
        if "ssl_ca_certs" in query or "ssl_ca_path" in query:
            context.load_verify_locations(cafile=query.get("ssl_ca_certs"), capath=query.get("ssl_ca_path"))
    except OSError as exc:  # ssl.SSLError too
        raise ValueError(f"cannot load the TLS files the Redis URL names ({exc})") from None
    return context


def bulk(value: bytes) -> bytes:
    """`value` as a RESP2 bulk string (one argument of a command)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """A command (its name and arguments) in RESP2."""
    return b"*%d\r\n%b" % (len(args), b"".join(map(bulk, args)))


def parse_reply(buffer: bytes, pos: int) -> tuple[Reply, int] | None:
    """The RESP2 reply that starts at `pos` in `buffer` and where it ends; None if it is not complete.

    Error replies come back as ReplyError values (not raised): they can be elements of an array.
    ProtocolError if the bytes are not RESP2.
    """
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buffer[pos]
    try:
        if kind == 58:  # b":" integer
            return int(buffer[pos + 1 : end]), end + 2
        if kind == 36:  # b"$" bulk string
            size = int(buffer[pos + 1 : end])
            if size < 0:
                return None, end + 2
            stop = end + 2 + size
            if len(buffer) < stop + 2:
                return None
            return buffer[end + 2 : stop], stop + 2
        if kind == 42:  # b"*" array
            count = int(buffer[pos + 1 : end])
            if count < 0:
                return None, end + 2
            items: list[Reply] = []
            pos = end + 2
            for _ in range(count):
                # Integers (a counted hit) inline: the script's answers are mostly these.
                if buffer.startswith(b":", pos) and (end := buffer.find(b"\r\n", pos)) >= 0:
                    items.append(int(buffer[pos + 1 : end]))
                    pos = end + 2
                    continue
                parsed = parse_reply(buffer, pos)
                if parsed is None:
                    return None
                item, pos = parsed
                items.append(item)
            return items, pos
    except ValueError:
        raise ProtocolError("malformed length in a Redis reply") from None
    if kind == 43:  # b"+" simple string
        return buffer[pos + 1 : end], end + 2
    if kind == 45:  # b"-" error
        return ReplyError(buffer[pos + 1 : end].decode(errors="replace")), end + 2
    raise ProtocolError(f"unexpected byte {kind!r} at the start of a Redis reply")


class _Connection(asyncio.Protocol):
    """One connection: writes commands, hands each reply to the oldest callback waiting (FIFO)."""

    def __init__(self, on_lost: Callable[[_Connection], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[Done] = deque()
        self.closed = False
        self._buffer = b""
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes, done: Done) -> None:
        """Write one command; `done` gets its reply (or the exception that ends the connection)."""
        assert self.transport is not None
        self.transport.write(data)
        self.waiting.append(done)

    def data_received(self, data: bytes) -> None:
        """Parse the complete replies buffered so far and hand them out in order."""
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        try:
            while pos < len(buffer):
                parsed = parse_reply(buffer, pos)
                if parsed is None:
                    break
                reply, pos = parsed
                if self.closed:  # a callback closed it (an error reply): the rest is moot
                    return
                if not self.waiting:
                    raise ProtocolError("Redis sent a reply nobody asked for")
                self.waiting.popleft()(reply)
        except ProtocolError as exc:
            self.close(exc)
            return
        self._buffer = buffer[pos:]

    def eof_received(self) -> bool:
        """Redis closed its side: close ours (connection_lost follows)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every call still waiting for its reply."""
        self.close(exc if exc is not None else ConnectionResetError("Redis closed the connection"))

    def close(self, exc: Exception) -> None:
        """Close the connection (if still open) and fail the calls waiting on it with `exc`."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                # Unsent commands too: their calls fail here and now. RuntimeError: its event loop
                # is closed already (a runner used from several loops, as tests do).
                with contextlib.suppress(RuntimeError):
                    self.transport.abort()
            self._on_lost(self)
        while self.waiting:
            self.waiting.popleft()(exc)


class _Call:
    """One script call on its way: what to send, whom to tell, and its deadline."""

    __slots__ = ("body", "count", "done", "finished", "numkeys", "timer")

    def __init__(self, numkeys: bytes, body: bytes, count: int, done: Done) -> None:
        self.numkeys = numkeys
        self.body = body
        self.count = count
        self.done = done
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None

    def finish(self, outcome: Reply) -> None:
        if not self.finished:
            self.finished = True
            if self.timer is not None:
                self.timer.cancel()
            self.done(outcome)


class ScriptRunner:
    """Runs one Lua script in Redis, pipelined over one connection (see the module docstring)."""

    def __init__(self, address: RedisAddress | str, script: str, timeout: float) -> None:
        self.address = parse_url(address) if isinstance(address, str) else address
        self.timeout = timeout
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()  # noqa: S324 (Redis' script id)
        self._evalsha = bulk(b"EVALSHA") + bulk(self._sha)
        self._eval = bulk(b"EVAL") + bulk(self._script)
        self._connection: _Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queued: list[_Call] = []  # waiting for the connection
        self._in_flight = 0
        self._idle: asyncio.Future[None] | None = None  # aclose waits on it for the calls in flight

    def run(self, numkeys: int, body: bytes, count: int, done: Done) -> None:
        """Run the script with `count` arguments (bulk strings, `numkeys` of them keys first),
        already encoded in `body`; `done` gets the reply or an exception, within the timeout.

        Call it from the event loop; `done` is called from it later (never during `run`).
        """
        loop = asyncio.get_running_loop()
        call = _Call(b"%d" % numkeys, body, count, done)
        self._in_flight += 1
        call.timer = loop.call_later(self.timeout, self._expire, call)
        connection = self._connection
        if connection is not None and self._loop is loop:
            self._send(connection, call)
            return
        self._queued.append(call)
        if self._connecting is None or self._loop is not loop:
            self._drop(ConnectionResetError("new event loop"))
            self._loop = loop
            self._connecting = loop.create_task(self._connect())

    async def aclose(self) -> None:
        """Wait (at most the timeout) for the calls on their way, then close the connection."""
        if self._in_flight:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):  # every call ends within its timeout anyway
                async with asyncio.timeout(self.timeout * 2):
                    await self._idle
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self._drop(ConnectionResetError("closed"))

    def _send(self, connection: _Connection, call: _Call, head: bytes | None = None) -> None:
        header = b"*%d\r\n%b%b" % (call.count + 3, head or self._evalsha, bulk(call.numkeys))
        connection.send(header + call.body, lambda reply: self._answered(connection, call, reply))

    def _answered(self, connection: _Connection, call: _Call, reply: Reply) -> None:
        if call.finished:
            return
        if isinstance(reply, ReplyError):
            if str(reply).startswith("NOSCRIPT") and not connection.closed:
                # The script cache was flushed: EVAL caches the script again (same deadline).
                self._send(connection, call, self._eval)
                return
            # Anything else (BUSY, OOM, READONLY after a failover, NOAUTH ...): a fresh connection.
            connection.close(ConnectionResetError("closed after an error reply"))
        self._finish(call, reply)

    def _finish(self, call: _Call, outcome: Reply) -> None:
        if call.finished:
            return
        self._in_flight -= 1
        call.finish(outcome)
        if not self._in_flight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _expire(self, call: _Call) -> None:
        if call.finished:
            return
        self._finish(call, TimeoutError(f"Redis did not answer within {self.timeout} s"))
        # A Redis that does not answer one call answers none: start over on a new connection.
        self._drop(TimeoutError("an earlier call timed out"))

    def _drop(self, exc: Exception) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(exc)

    def _lost(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None

    async def _connect(self) -> None:
        """Open and prepare the connection, then send the calls that waited for it."""
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self._open(loop)
                await self._handshake(loop, connection)
        except (Exception, asyncio.CancelledError) as exc:
            failure = exc if isinstance(exc, Exception) else ConnectionResetError("connecting was cancelled")
            if connection is not None:
                connection.close(failure)
            queued, self._queued = self._queued, []
            for call in queued:
                self._finish(call, failure)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            if self._connecting is asyncio.current_task():
                self._connecting = None
        self._connection = connection
        queued, self._queued = self._queued, []
        for call in queued:
            if not call.finished:
                self._send(connection, call)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        address = self.address

        def factory() -> _Connection:
            return _Connection(self._lost)

        if address.path is not None:
            _, connection = await loop.create_unix_connection(factory, address.path)
        else:
            _, connection = await loop.create_connection(
                factory,
                address.host,
                address.port,
                ssl=address.tls,
                server_hostname=address.host if address.tls is not None else None,
            )
        return connection

    async def _handshake(self, loop: asyncio.AbstractEventLoop, connection: _Connection) -> None:
        """AUTH, SELECT and SCRIPT LOAD in one round trip; ReplyError if Redis refuses any."""
        address = self.address
        commands: list[bytes] = []
        if address.password is not None:
            credentials = (address.username, address.password) if address.username else (address.password,)
            commands.append(command(b"AUTH", *(part.encode() for part in credentials)))
        if address.db:
            commands.append(command(b"SELECT", b"%d" % address.db))
        commands.append(command(b"SCRIPT", b"LOAD", self._script))
        replies: list[asyncio.Future[Reply]] = []
        for data in commands:
            reply: asyncio.Future[Reply] = loop.create_future()
            replies.append(reply)
            connection.send(data, _resolve(reply))
        for reply in replies:
            answer = await reply
            if isinstance(answer, ReplyError):
                # Only the error's code (WRONGPASS, NOAUTH, ERR ...): the message is Redis' own.
                raise ReplyError(str(answer).partition(" ")[0])
            if isinstance(answer, Exception):
                raise answer


def _resolve(future: asyncio.Future[Reply]) -> Done:
    """A `Done` that sets `future`'s result, unless it is cancelled (a timed-out handshake)."""

    def done(reply: Reply) -> None:
        if not future.done():
            future.set_result(reply)

    return done
