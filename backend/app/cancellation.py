"""Stop working for a client that has gone away.

Starlette keeps running a handler after its client disconnected, so an abandoned search would hold
its database slot until it finished. This middleware watches for `http.disconnect` once the
request body has been read and cancels the handler's task: asyncpg then cancels the running
statement on the server, and on SQLite the statement is interrupted (app.statement_limits).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A request still running after this long starts watching for its client's disconnect.
WATCH_AFTER_SECONDS = 0.05
# Set in the ASGI scope of a request whose client went away before it was answered.
CLIENT_GONE = "app.client_gone"
# A long-lived response (the live events stream) puts a callable here that ends it; the production
# server (app.httpserver) calls it when a graceful shutdown begins, so the stream does not hold the
# shutdown up until its time limit.
STOP_ON_SHUTDOWN = "app.stop_on_shutdown"


class CancelOnDisconnectMiddleware:
    """Cancels a request's handler when its client disconnects before the response is complete."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = asyncio.current_task()
        assert handler is not None
        watcher: asyncio.Task[Message] | None = None
        disconnected = False
        pending: Message | None = None

        def on_message(task: asyncio.Task[Message]) -> None:
            nonlocal disconnected
            if not task.cancelled() and task.exception() is None and task.result()["type"] == "http.disconnect":
                disconnected = True
                handler.cancel()

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(on_message)

        timer: asyncio.TimerHandle | None = None

        def watch_later() -> None:
            # Most requests are answered within milliseconds: a watcher task for each would cost
            # more than it saves, so only a request still running after a moment gets one.
            nonlocal timer
            timer = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, watch)

        async def watched_receive() -> Message:
            nonlocal pending
            if pending is not None:
                message, pending = pending, None
                return message
            if watcher is not None:
                # The body is read: the next message can only be the disconnect the watcher awaits.
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watch_later()
            return message

        headers = dict(scope["headers"])
        if b"content-length" not in headers and b"transfer-encoding" not in headers:
            # No body (a GET): the handler may never read one, so read its empty message now.
            pending = await receive()
            if pending["type"] == "http.request":
                watch_later()
        try:
            await self.app(scope, watched_receive, send)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            # Our own cancellation: the client is gone, there is no one to answer. The access log
            # (app.middleware) reads the mark.
            handler.uncancel()
            scope[CLIENT_GONE] = True
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
