"""uvicorn's httptools protocol with the limits it lacks, for `python -m app.serve`.

Stock uvicorn + httptools has no bound on the request head: httptools grows a header value (and
uvicorn the URL) by repeated copying, so one connection sending an ever-growing header costs
quadratic CPU and unbounded memory. This subclass counts the bytes it feeds the parser:

- request line + headers over `MAX_HEADER_BYTES` -> 431 problem+json and the connection closes, after
  reading at most that many bytes of the head (cost linear in the bytes read, memory bounded);
- a head not complete `HTTP_READ_TIMEOUT_S` after its first byte (or a connection that sends nothing
  for that long) -> 408 (or, if nothing was sent, a plain close);
- the bytes of one request body on the wire are capped too (chunk framing and trailers included:
  trailers are headers, parsed the same quadratic way), and a body still trickling in after the
  response was sent is dropped once it stalls for `HTTP_READ_TIMEOUT_S`. A stalled body the app is
  waiting for is a 408 from the app's middleware (middleware.py), so it is logged like any response;
- uvicorn's text/plain answers (the `limit_concurrency` 503, the 400 for unparsable HTTP) become
  problem+json;
- a graceful shutdown ends long-lived responses (the live events stream,
  STOP_ON_SHUTDOWN) instead of waiting for them until the shutdown's time limit. No read deadline
  applies while a response streams: the request was complete before it began.

h11 has a size limit built in (`h11_max_incomplete_event_size`) but is pure Python and measurably
slower; the README's "Limits" section has the numbers. Keep this module in step with the pinned
uvicorn: it overrides `_start_asgi_task`, a private method (tests/test_http_limits.py covers it).
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

import orjson
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.config import get_settings
from app.errors import PROBLEM_JSON, RETRY_AFTER_SECONDS

# Sent on every response that never reaches the app (the app's middleware adds them to the rest).
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]

# A long-lived response (the live events stream) puts a callable here in its ASGI scope that ends
# it; the server calls it when a graceful shutdown begins, so the stream does not hold the shutdown
# up until its time limit.
STOP_ON_SHUTDOWN = "app.stop_on_shutdown"


def _problem(status: int, detail: str) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    return orjson.dumps({"type": "about:blank", "title": phrase, "status": status, "detail": detail})


def _problem_app(status: int, detail: str, *extra_headers: tuple[bytes, bytes]) -> ASGI3Application:
    body = _problem(status, detail)
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
        *extra_headers,
    ]

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


HEADER_TOO_LARGE_DETAIL = "The request line and headers are larger than allowed."
_header_too_large = _problem_app(431, HEADER_TOO_LARGE_DETAIL)
_over_capacity = _problem_app(
    503,
    "The server has too many open connections; retry shortly.",
    (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
)
# Room for chunk framing on the wire: a body is at most MAX_BODY_BYTES once decoded (middleware.py).
_BODY_WIRE_FACTOR = 2


def head_size(scope: Any) -> int:
    """The size of a parsed request head as sent (within a few bytes: spacing is not kept)."""
    size = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 13  # " ? HTTP/1.1\r\n"
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size + 2


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a bounded request head, read deadlines and problem+json refusals."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()  # read once per process (cached); the worker's environment
        self.max_head_bytes = settings.MAX_HEADER_BYTES
        self.max_body_wire_bytes = _BODY_WIRE_FACTOR * settings.MAX_BODY_BYTES + settings.MAX_HEADER_BYTES
        self.read_timeout = settings.HTTP_READ_TIMEOUT_S
        # Per request: are we before the end of its head, did it start, how many bytes of it / of its
        # body came.
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        self._body_bytes = 0
        self._last_read = 0.0
        self._read_timer: asyncio.TimerHandle | None = None

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: a connection that never sends a request is closed after the read timeout."""
        super().connection_made(transport)
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the read timer with the connection."""
        self._cancel_read_timer()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """A graceful shutdown begins: end a long-lived response (an event stream), let others finish."""
        if self.cycle is not None and not self.cycle.response_complete:
            stop = self.cycle.scope.get(STOP_ON_SHUTDOWN)
            if callable(stop):
                stop()
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, at most MAX_HEADER_BYTES of a request head."""
        if self.transport.is_closing():
            return
        self._last_read = self.loop.time()
        while self._in_head and data:
            room = self.max_head_bytes - self._head_bytes
            # Only the part up to the limit is parsed, so the parser never holds more than that.
            chunk, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._head_bytes += len(chunk)
            super().data_received(chunk)
            if self.transport.is_closing():
                return
            if self._in_head and self._head_bytes >= self.max_head_bytes:
                self._refuse(431, HEADER_TOO_LARGE_DETAIL)
                return
        if data:
            self._body_bytes += len(data)
            if self._body_bytes > self.max_body_wire_bytes:
                # Far past anything the app accepts (it answers 413 at MAX_BODY_BYTES): stop parsing.
                self.transport.close()
                return
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """Unparsable HTTP: problem+json instead of uvicorn's text/plain."""
        self._write_problem(400, "The request is not valid HTTP/1.1.")

    # Parser callbacks

    def on_message_begin(self) -> None:
        """A request head starts: it has `read_timeout` seconds to complete."""
        super().on_message_begin()
        self._head_started = True
        self._arm_read_timer()

    def on_headers_complete(self) -> None:
        """The head is complete: its deadline no longer applies."""
        self._in_head = False
        self._cancel_read_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The request is complete: what comes next is the head of the next one."""
        super().on_message_complete()
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        self._body_bytes = 0
        self._cancel_read_timer()

    def on_response_complete(self) -> None:
        """If the request body is still arriving (the app answered without reading it), watch it stall."""
        super().on_response_complete()
        if not self._in_head and not self.transport.is_closing():
            self._arm_read_timer()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Both the immediate and the pipelined path come through here, with the app uvicorn chose.
        if app is service_unavailable:
            app = _over_capacity
        elif head_size(cycle.scope) > self.max_head_bytes:
            # A pipelined head parsed along with the previous request's body was not counted as it came.
            app = _header_too_large
        super()._start_asgi_task(cycle, app)

    # Refusals and deadlines

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(self.read_timeout, self._on_read_timeout)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _on_read_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            if self._head_started:
                self._refuse(408, "The request head did not arrive in time.")
            else:
                self.transport.close()  # an idle connection: nothing was asked, nothing to answer
            return
        # A body still arriving after the response: close once it stalls; a body the app is reading
        # is the middleware's business (see the module docstring).
        idle = self.loop.time() - self._last_read
        if idle < self.read_timeout:
            self._read_timer = self.loop.call_later(self.read_timeout - idle, self._on_read_timeout)
        elif self.cycle is not None and self.cycle.response_complete:
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        """Answer a request that never reached the app, then close the connection."""
        if self.cycle is None or self.cycle.response_complete:
            self._write_problem(status, detail)
        else:
            self.transport.close()  # a pipelined response is still being written: just hang up

    def _write_problem(self, status: int, detail: str) -> None:
        body = _problem(status, detail)
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        for name, value in [
            *self.server_state.default_headers,
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *SECURITY_HEADERS,
        ]:
            head.append(name + b": " + value + b"\r\n")
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
