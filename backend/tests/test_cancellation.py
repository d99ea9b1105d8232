"""app.cancellation: a handler is cancelled when its client disconnects, and only then."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.cancellation import WATCH_AFTER_SECONDS, CancelOnDisconnectMiddleware


async def slow(request: Request) -> PlainTextResponse:
    await request.body()
    await asyncio.sleep(WATCH_AFTER_SECONDS * 3)  # long enough for the disconnect watcher to start
    # Work after the last byte (as a FileResponse closing its file): the handler is still running
    # when the client has its whole answer.
    return PlainTextResponse("done", background=BackgroundTask(asyncio.sleep, 0))


def client() -> httpx.AsyncClient:
    app = CancelOnDisconnectMiddleware(Starlette(routes=[Route("/slow", slow, methods=["GET", "POST"])]))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_answered_request_is_never_cancelled_afterwards() -> None:
    # httpx's in-process transport runs the app in the caller's task and reports a disconnect once
    # the response is complete: the watcher must not cancel anything then.
    async with client() as c:
        for method in ("GET", "POST"):
            response = await c.request(method, "/slow", content=b"x" if method == "POST" else None)
            assert response.text == "done"
            await asyncio.sleep(WATCH_AFTER_SECONDS * 2)  # a cancellation would surface here
