"""The agent-tool contract (specs/001-backend-core-api/contracts/mcp-tools.json), like the OpenAPI one:
it is what the server lists (`make mcp-tools`), and it says what the issue asks of each tool.
"""

from __future__ import annotations

import difflib
import json
import logging
from typing import Any

import pytest

from app.mcp import mcp_server
from app.mcp.export import CONTRACT_PATH, contract, render
from app.schemas.task import TaskListQuery

TOOLS = ["find_tasks", "get_task", "add_tasks", "update_tasks", "complete_tasks", "delete_tasks"]
# (readOnlyHint, destructiveHint, idempotentHint) per tool.
HINTS = {
    "find_tasks": (True, False, True),
    "get_task": (True, False, True),
    "add_tasks": (False, False, False),
    "update_tasks": (False, True, False),
    "complete_tasks": (False, True, True),
    "delete_tasks": (False, True, True),
}


@pytest.fixture(scope="module")
def tools() -> dict[str, dict[str, Any]]:
    """The committed tools by name."""
    document: dict[str, Any] = json.loads(CONTRACT_PATH.read_text(encoding="utf-8"))
    return {tool["name"]: tool for tool in document["tools"]}


def test_export_matches_committed_tools() -> None:
    expected = render(contract())
    actual = CONTRACT_PATH.read_text(encoding="utf-8") if CONTRACT_PATH.exists() else ""
    diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), "committed", "app", n=2))
    assert actual == expected, f"mcp-tools.json is stale: run `make mcp-tools` and commit it\n{diff[:4000]}"


def test_export_is_deterministic() -> None:
    assert render(contract()) == render(contract())


def test_declare_exactly_the_six_tools(tools: dict[str, dict[str, Any]]) -> None:
    assert list(tools) == TOOLS


def test_declare_hints_truthfully(tools: dict[str, dict[str, Any]]) -> None:
    for name, (read_only, destructive, idempotent) in HINTS.items():
        hints = tools[name]["annotations"]
        assert (hints["readOnlyHint"], hints["destructiveHint"], hints["idempotentHint"]) == (
            read_only,
            destructive,
            idempotent,
        ), name
        assert hints["openWorldHint"] is False
        assert hints["title"] == tools[name]["title"]


def test_declare_output_schema_for_every_tool(tools: dict[str, dict[str, Any]]) -> None:
    outputs = {name: tool["outputSchema"] for name, tool in tools.items()}
    assert set(outputs["find_tasks"]["properties"]) == {"items", "total", "limit", "offset", "next_cursor"}
    assert outputs["get_task"]["title"] == "TaskRead"
    for name in ("add_tasks", "update_tasks", "complete_tasks"):
        assert set(outputs[name]["properties"]) == {"items"}, name
        assert outputs[name]["properties"]["items"]["items"] == {"$ref": "#/$defs/TaskRead"}, name
    assert outputs["delete_tasks"]["properties"]["deleted"]["items"]["format"] == "uuid"


def _property_names(schema: Any) -> set[str]:
    """Every property name anywhere in a JSON schema (including $defs)."""
    names: set[str] = set()
    if isinstance(schema, dict):
        properties = schema.get("properties")
        if isinstance(properties, dict):
            names.update(properties)
        for value in schema.values():
            names |= _property_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names |= _property_names(value)
    return names


def test_declare_no_user_argument(tools: dict[str, dict[str, Any]]) -> None:
    for name, tool in tools.items():
        schema = tool["inputSchema"]
        assert schema["additionalProperties"] is False, name
        assert not {n for n in _property_names(schema) if "user" in n or "owner" in n}, name


def test_declare_batch_limits(tools: dict[str, dict[str, Any]]) -> None:
    def limits(tool: str, argument: str) -> tuple[int, int]:
        schema = tools[tool]["inputSchema"]["properties"][argument]
        return schema["minItems"], schema["maxItems"]

    assert limits("add_tasks", "tasks") == (1, 25)
    assert limits("update_tasks", "updates") == (1, 25)
    assert limits("complete_tasks", "ids") == (1, 100)
    assert limits("delete_tasks", "ids") == (1, 100)
    add = tools["add_tasks"]["inputSchema"]["$defs"]["TaskCreate"]
    assert add["required"] == ["title"] and add["additionalProperties"] is False
    update = tools["update_tasks"]["inputSchema"]["$defs"]["TaskUpdate"]
    assert update["required"] == ["id"] and update["additionalProperties"] is False
    assert {"id", "etag", "title", "description", "status", "priority", "due_date"} == set(update["properties"])


def test_find_tasks_takes_the_list_query_parameters(tools: dict[str, dict[str, Any]]) -> None:
    schema = tools["find_tasks"]["inputSchema"]
    rest = TaskListQuery.model_json_schema()
    assert list(schema["properties"]) == list(rest["properties"])
    for name in ("status", "priority", "due_before", "due_after", "q", "sort", "offset"):
        ours, theirs = schema["properties"][name], rest["properties"][name]
        # The same types, limits and patterns; only the titles/descriptions may be worded for agents.
        strip = ("title", "description")
        assert {k: v for k, v in ours.items() if k not in strip} == {k: v for k, v in theirs.items() if k not in strip}
    limit = schema["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 20)


def test_building_the_server_leaves_logging_alone() -> None:
    # The SDK would install its own console handler on an unconfigured root logger.
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        mcp_server()
        assert root.handlers == [] and root.level == level
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
