"""The MCP server at /mcp: agent tools over Streamable HTTP, on the same token, services and isolation
as /api.

`create_mcp_endpoint(settings)` builds one per app. The host app mounts `endpoint.asgi` at exactly
/mcp (a route, not a Mount: a Mount would redirect POST /mcp to /mcp/) and enters `endpoint.run()`
in its lifespan, since the SDK's own lifespan does not run for an app served inside another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.mcp.http import MCP_PATH, METADATA_PATH, McpHttpEndpoint, protected_resource_metadata, transport_security
from app.mcp.tools import task_tools

__all__ = [
    "MCP_PATH",
    "METADATA_PATH",
    "McpEndpoint",
    "create_mcp_endpoint",
    "mcp_server",
    "protected_resource_metadata",
]

# The SDK logs every stateless request at INFO ("Terminating session: None"), which would double the
# access log; its warnings (a refused Host header) and errors (a crashed tool) still come through.
logging.getLogger("mcp").setLevel(logging.WARNING)

INSTRUCTIONS = """\
Manage the signed-in user's tasks. Every call acts for the user whose token it carries; there is no
way to reach another user's tasks. Use find_tasks to look tasks up (filters, text search, sorting,
paging), get_task for one task and its etag, add_tasks / update_tasks / complete_tasks /
delete_tasks to change them in batches. A batch is all or nothing: if one item fails, nothing
changes and the error names the item's index. Dates are RFC 3339 with an offset, e.g.
2026-12-01T17:00:00Z.
"""


def mcp_server() -> MCPServer:
    """The MCP server with the six task tools (no transport attached)."""
    # MCPServer() calls logging.basicConfig() with a console handler of its own, which takes over
    # the root logger wherever logging is not configured yet (tests, `make mcp-tools`). Logging is
    # app/logging.py's business: a handler in place for the call makes basicConfig() do nothing.
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        return MCPServer(
            name="task-api",
            title="Task API",
            version="1.0.0",
            instructions=INSTRUCTIONS,
            tools=task_tools(),
        )
    finally:
        root.removeHandler(placeholder)


class McpEndpoint:
    """One app's MCP server and the ASGI app that serves it at /mcp."""

    def __init__(self, settings: Settings) -> None:
        self.server = mcp_server()
        self._security = transport_security(settings)
        self._max_body = settings.MAX_BODY_BYTES
        self.asgi = McpHttpEndpoint(self._handle, self._security)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The current session manager: a new one is made each time the app starts (run() below).
        await self.server.session_manager.handle_request(scope, receive, send)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Serve MCP requests while the block runs; enter it in the host app's lifespan.

        A session manager can run only once, so each start gets a fresh one: an app whose lifespan
        runs twice (a test client, a restart in process) starts again. The manager's task group
        lives in a task of its own, because an anyio task group must be left by the task that
        entered it, and a lifespan's startup and shutdown may run in different tasks (pytest-asyncio
        fixtures do).
        """
        # Stateless: each POST is served by itself, so any worker process can answer any request and
        # no session state needs sharing (clients of protocol 2026-07-28 keep none anyway). JSON
        # responses rather than SSE: no tool streams progress or asks the client anything back.
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=True,
            transport_security=self._security,
            max_request_body_size=self._max_body,
        )
        manager = self.server.session_manager
        started, stop = asyncio.Event(), asyncio.Event()

        async def serve() -> None:
            async with manager.run():
                started.set()
                await stop.wait()

        task = asyncio.create_task(serve(), name="mcp-session-manager")
        ready = asyncio.create_task(started.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not started.is_set():
            ready.cancel()
            await task  # it ended before it started: raise its error here, at startup
        try:
            yield
        finally:
            stop.set()
            await task


def create_mcp_endpoint(settings: Settings) -> McpEndpoint:
    """Build the MCP server and its HTTP endpoint for `settings`."""
    return McpEndpoint(settings)
