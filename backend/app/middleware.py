"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware): request id, access log, security headers,
body size limit and read timeout, cancelling the work of a client that went away; and CORS whose
refusals are problem+json.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem_response
from app.ratelimit import RATE_LIMIT_HEADERS

if TYPE_CHECKING:
    from app.metrics import Metrics

access_log = logging.getLogger("app.access")
logger = logging.getLogger("app.errors")
# An incoming X-Request-ID is echoed only if it looks like an id, so logs cannot be forged with it.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
NOSNIFF = (b"x-content-type-options", b"nosniff")
NO_STORE = (b"cache-control", b"no-store")
VARY_ORIGIN = (b"vary", b"Origin")
# A request still running after this long starts watching for its client's disconnect. Not sooner:
# under load an ordinary request spends tens of milliseconds queued for the CPU and a database slot,
# and at 50 ms most of them started a watcher task, costing about 5% of throughput (make bench). The
# work an abandoned request can still do is bounded anyway: this second, then the statement limit.
WATCH_AFTER_SECONDS = 1.0


class RequestContextMiddleware:
    """Adds X-Request-ID and the security headers, logs one JSON line per request, answers 413 for
    oversized bodies and 408 for a body that stalls; runs CORS for requests with an Origin.

    Every response gets `X-Content-Type-Options: nosniff`, and `Cache-Control: no-store` unless its
    path starts with one of `cacheable_paths` (the public docs) or the app chose a Cache-Control:
    API responses carry a user's data, and a cached /health would hide an outage. A rate-limited
    request's RateLimit-Policy (app/ratelimit.py) is added here too, and with `metrics` each request
    is counted and timed under its route template.

    Starlette keeps running a handler after its client disconnected, so an abandoned search would
    hold its database slot until it finished. Once a request has read its body and run for
    WATCH_AFTER_SECONDS, a watcher awaits the client's `http.disconnect` and cancels the request's
    task: asyncpg then cancels the running statement on the server, and on SQLite the statement is
    interrupted (app.statement_limits). The access log says 499.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        read_timeout: float = 10.0,
        cacheable_paths: tuple[str, ...] = (),
        metrics: Metrics | None = None,
        cors: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.cacheable_paths = cacheable_paths
        self.metrics = metrics
        # CORS (`cors`: ProblemCORSMiddleware's options) only wraps requests that carry an Origin;
        # for the others all it does is add `Vary: Origin`, which send_with_id does below.
        self.cors: ASGIApp | None = ProblemCORSMiddleware(app, **cors) if cors is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = declared = origin = None
        has_body = False
        # One pass over the request headers for everything this layer (and CORS) looks at.
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
            elif name == b"content-length":
                declared = value
                has_body = True
            elif name == b"transfer-encoding":
                has_body = True
            elif name == b"origin":
                origin = value
        request_id = incoming.decode("latin-1") if incoming is not None else ""
        if not REQUEST_ID_PATTERN.match(request_id):
            request_id = os.urandom(16).hex()
        status = 500
        response_started = False

        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            status = 413 if declared.isdigit() else 400
            await self._reject(status, request_id, scope, receive, send)
            self._log(scope, status, started, request_id)
            return

        app = self.app
        vary_origin = self.cors is not None
        if origin is not None and self.cors is not None:
            app, vary_origin = self.cors, False
        received = 0
        body_complete = answered = disconnected = False
        no_store = not (self.cacheable_paths and scope["path"].startswith(self.cacheable_paths))
        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Task[Message] | None = None
        timer: asyncio.TimerHandle | None = None
        pending: Message | None = None

        def on_message(done: asyncio.Task[Message]) -> None:
            nonlocal disconnected
            # Only before the response is complete: later (an in-process client's end of the
            # exchange, a done-callback run late) there is nothing left to save.
            if answered or done.cancelled() or done.exception() is not None:
                return
            disconnected = True
            task.cancel()

        async def disconnect() -> Message:
            # After the body only the disconnect matters (a client may still send empty body chunks).
            while (message := await receive())["type"] != "http.disconnect":
                pass
            return message

        def watch() -> None:
            nonlocal watcher
            if watcher is None:
                watcher = asyncio.ensure_future(disconnect())
                watcher.add_done_callback(on_message)

        def body_read() -> None:
            nonlocal body_complete, timer
            body_complete = True
            timer = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, watch)

        async def limited_receive() -> Message:
            nonlocal received, pending
            if pending is not None:
                message, pending = pending, None
                return message
            if body_complete:
                # Later reads only wait for the disconnect, which the watcher awaits (one reader
                # of the connection at a time); no deadline.
                watch()
                assert watcher is not None
                return await asyncio.shield(watcher)
            try:
                # Per read, so a slow upload that keeps moving is fine and a stalled one is not.
                async with asyncio.timeout(self.read_timeout):
                    message = await receive()
            except TimeoutError:
                # FastAPI re-raises HTTPException from the body read (anything else it would turn
                # into a 400), and errors.py renders it.
                raise HTTPException(408, "The request body stalled.", headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # A chunked body without Content-Length (the rest is not read: close).
                    raise HTTPException(
                        413, "The request body is larger than allowed.", headers={"Connection": "close"}
                    )
                if not message.get("more_body", False):
                    body_read()
            else:
                body_read()
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = message.get("headers", [])
                cache_control = False
                vary: list[bytes] = []
                for name, value in headers:
                    lowered = name.lower()
                    if lowered == b"cache-control":
                        cache_control = True
                    elif lowered == b"vary" and vary_origin:
                        vary.append(value)
                if vary:
                    # As Starlette's CORS does it: one Vary listing the app's values, then Origin.
                    headers = [(name, value) for name, value in headers if name.lower() != b"vary"]
                    vary.append(b"Origin")
                    headers.append((b"vary", b", ".join(vary)))
                elif vary_origin:
                    headers = [*headers, VARY_ORIGIN]
                extra = [(b"x-request-id", request_id.encode()), NOSNIFF, *scope.get(RATE_LIMIT_HEADERS, ())]
                if no_store and not cache_control:
                    extra.append(NO_STORE)
                message["headers"] = [*headers, *extra]
            elif not message.get("more_body", False):
                answered = True
            await send(message)

        if not has_body:
            # No body (a GET): the handler may never read one, so read its empty message now.
            pending = await receive()
            if not pending.get("more_body", False):
                body_read()
        try:
            await app(scope, limited_receive, send_with_id)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            # Our own cancellation: the client is gone and there is no one to answer.
            task.uncancel()
            status = 499  # as nginx logs it
        except Exception as exc:
            # The last resort (Starlette's outer ServerErrorMiddleware is not used, app.main), so a
            # 500 still carries the request id and is logged once.
            logger.error("unhandled error: %s", type(exc).__name__, exc_info=exc, extra={"request_id": request_id})
            if response_started:
                raise
            await problem_response(500, "An unexpected error occurred.")(scope, receive, send_with_id)
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()
            self._log(scope, status, started, request_id)

    async def _reject(self, status: int, request_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        detail = "The request body is larger than allowed." if status == 413 else "Invalid Content-Length."
        headers = {"X-Request-ID": request_id, "Connection": "close", "X-Content-Type-Options": "nosniff"}
        response = problem_response(status, detail, headers={**headers, "Cache-Control": "no-store"})
        await response(scope, receive, send)

    def _log(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        # Path only: query strings may carry search text; headers (tokens) are never logged.
        access_log.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "request_id": request_id,
            },
        )
        if self.metrics is not None:
            self.metrics.observe_request(scope, status, elapsed)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, except that a refused preflight is a 403 problem+json, not text/plain 400.

    403: the request is well-formed, but this origin (or method, or header) is not allowed. Browsers
    look only at the missing Access-Control-Allow-* headers; the body is for people and tools.
    """

    def preflight_response(self, request_headers: Headers) -> Response:
        """The preflight answer; refusals rendered as problem+json."""
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        # Starlette's fixed text, e.g. "Disallowed CORS origin, method": it never echoes the request.
        detail = bytes(response.body).decode() + "."
        kept = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return problem_response(403, detail, headers=kept)
