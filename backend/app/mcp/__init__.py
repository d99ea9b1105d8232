"""The MCP server at /mcp: agent tools over Streamable HTTP, on the same token, services and isolation
as /api.

`create_mcp_endpoint(settings)` builds one per app. The host app mounts `endpoint.asgi` at exactly
/mcp (a route, not a Mount: a Mount would redirect POST /mcp to /mcp/) and enters `endpoint.run()`
in its lifespan, since the SDK's own lifespan does not run for an app served inside another.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from mcp.server.mcpserver import MCPServer

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
    return MCPServer(
        name="task-api",
        title="Task API",
        version="1.0.0",
        instructions=INSTRUCTIONS,
        tools=task_tools(),
    )


@dataclass(frozen=True)
class McpEndpoint:
    """One app's MCP server and the ASGI app that serves it at /mcp."""

    server: MCPServer
    asgi: McpHttpEndpoint

    def run(self) -> AbstractAsyncContextManager[None]:
        """The session manager's task group; enter it in the host app's lifespan."""
        return self.server.session_manager.run()


def create_mcp_endpoint(settings: Settings) -> McpEndpoint:
    """Build the MCP server and its HTTP endpoint for `settings`."""
    server = mcp_server()
    security = transport_security(settings)
    # Stateless: each POST is served by itself, so any worker process can answer any request and
    # no session state needs sharing (clients of protocol 2026-07-28 keep none anyway). JSON
    # responses rather than SSE: no tool streams progress or asks the client anything back.
    server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        transport_security=security,
        max_request_body_size=settings.MAX_BODY_BYTES,
    )
    return McpEndpoint(server, McpHttpEndpoint(server.session_manager.handle_request, security))
