"""`python -m app.mcp.export [PATH]`: write the tools/list result as JSON (what `make mcp-tools` runs).

The committed file (specs/001-backend-core-api/contracts/mcp-tools.json) is the agent-facing
contract: tool names, input and output schemas, annotations. tests/test_mcp_contract.py fails
when the server and the file differ, and tests/test_mcp.py checks that a real server lists
exactly these tools over Streamable HTTP.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from app.config import REPO_ROOT
from app.mcp import mcp_server
from app.openapi_export import write_contract

CONTRACT_PATH = REPO_ROOT / "specs" / "001-backend-core-api" / "contracts" / "mcp-tools.json"


async def _tools() -> list[dict[str, Any]]:
    tools = await mcp_server().list_tools()
    # The wire form: camelCase aliases, absent fields left out.
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


def contract() -> dict[str, Any]:
    """The tools/list result of the MCP server (nothing connects anywhere)."""
    return {"tools": asyncio.run(_tools())}


def render(document: dict[str, Any]) -> str:
    """`document` as the committed text: indented, keys in the SDK's order, non-ASCII kept."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> None:
    """Write the tools to argv[0], or to CONTRACT_PATH."""
    write_contract(argv, CONTRACT_PATH, render(contract()))


if __name__ == "__main__":
    main(sys.argv[1:])
