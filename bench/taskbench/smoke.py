"""Pre-flight checks: a fast server that answers 401/404/422 proves nothing,
so each server must give the expected answers before it is measured."""

from __future__ import annotations

from typing import Any

import httpx

from taskbench.db import TASKS_PER_USER
from taskbench.workload import Workload

TASK_FIELDS = {
    "id", "title", "description", "status", "priority", "due_date",
    "user_id", "created_at", "updated_at",
}  # fmt: skip


def _check(failures: list[str], ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)


def _task_ok(body: Any) -> bool:
    return isinstance(body, dict) and body.keys() >= TASK_FIELDS


def _mcp_find(client: httpx.Client, auth: dict[str, str], *, modern: bool) -> tuple[int, Any]:
    """POST /mcp tools/call find_tasks (limit 20) as lua/tasks.lua sends it; (status, result)."""
    params: dict[str, Any] = {"name": "find_tasks", "arguments": {"limit": 20}}
    headers = {**auth, "Accept": "application/json, text/event-stream"}
    if modern:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        headers |= {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "find_tasks"}
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}, headers=headers)
    return r.status_code, (r.json().get("result") if r.status_code == 200 else None)


def smoke_check(base_url: str, workload: Workload, *, mcp: bool = False) -> None:
    """Raise with every failed expectation listed."""
    user, task_id = workload.pairs[0]
    auth = {"Authorization": f"Bearer {workload.tokens[user]}"}
    other = {"Authorization": f"Bearer {workload.tokens[(user + 1) % len(workload.tokens)]}"}
    failures: list[str] = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        r = client.get("/api/tasks", params={"limit": 20}, headers=auth)
        body = r.json() if r.status_code == 200 else {}
        items = body.get("items", [])
        _check(failures, r.status_code == 200, f"list: status {r.status_code}")
        _check(failures, len(items) == 20 and all(map(_task_ok, items)), "list: 20 tasks")
        _check(
            failures,
            body.get("total") == TASKS_PER_USER,
            f"list: total {body.get('total')}",
        )
        _check(
            failures,
            (body.get("limit"), body.get("offset")) == (20, 0),
            "list: limit/offset",
        )
        created = [t.get("created_at") for t in items]
        _check(failures, created == sorted(created, reverse=True), "list: newest first")
        if body.get("next_cursor"):
            # Keyset paging: the next page follows on, with the same total.
            r = client.get("/api/tasks", params={"limit": 20, "cursor": body["next_cursor"]}, headers=auth)
            after = r.json() if r.status_code == 200 else {}
            more = after.get("items", [])
            ok = len(more) == 20 and not {t.get("id") for t in more} & {t.get("id") for t in items}
            ok = ok and all(t.get("created_at") <= created[-1] for t in more)
            _check(failures, ok and after.get("total") == TASKS_PER_USER, f"list by next_cursor: {r.status_code}")

        r = client.get("/api/tasks", params={"limit": 20})
        _check(failures, r.status_code == 401, f"list without token: {r.status_code}")

        r = client.get(f"/api/tasks/{task_id}", headers=auth)
        _check(
            failures,
            r.status_code == 200 and _task_ok(r.json()),
            f"get: {r.status_code}",
        )
        r = client.get(f"/api/tasks/{task_id}", headers=other)
        # Scoped by user: 404, or 403 if the app chooses to say "not yours".
        ok = r.status_code in (403, 404)
        _check(failures, ok, f"get as another user: {r.status_code}")

        payload = {"title": "smoke", "description": "bench smoke", "priority": "high"}
        r = client.post("/api/tasks", json=payload, headers=auth)
        ok = r.status_code == 201 and _task_ok(r.json()) and r.json()["title"] == "smoke"
        _check(failures, ok, f"create: {r.status_code} {r.text[:200]}")

        r = client.patch(f"/api/tasks/{task_id}", json={"status": "completed"}, headers=auth)
        ok = r.status_code == 200 and _task_ok(r.json()) and r.json()["status"] == "completed"
        _check(failures, ok, f"patch: {r.status_code} {r.text[:200]}")

        for modern in (True, False) if mcp else ():
            # A tool error is an HTTP 200 too (isError): wrk cannot tell, so check the result here.
            status, result = _mcp_find(client, auth, modern=modern)
            page = (result or {}).get("structuredContent") or {}
            ok = status == 200 and result.get("isError") is False and len(page.get("items", [])) == 20
            _check(failures, ok and page.get("total") == TASKS_PER_USER + 1, f"mcp find_tasks: {status} {result}")
    if failures:
        raise RuntimeError(f"{base_url} failed pre-flight checks: " + "; ".join(failures))
