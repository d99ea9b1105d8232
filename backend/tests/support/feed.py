"""A client's copy of its tasks kept from the change feed alone (GET /api/tasks/changes), as a
syncing device keeps one: the race tests compare it with the task list afterwards."""

from __future__ import annotations

from typing import Any


class FeedCopy:
    """Tasks and ETags by id, and the cursor up to which the feed has been applied."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.etags: dict[str, str] = {}
        self.cursor: str | None = None

    def params(self, limit: int) -> dict[str, Any]:
        """The query of the next poll: from the start, then since the cursor."""
        return {"limit": limit} if self.cursor is None else {"since": self.cursor, "limit": limit}

    def apply(self, page: dict[str, Any]) -> bool:
        """Apply one feed page; True while the feed has more."""
        for change in page["changes"]:
            if change["op"] == "upsert":
                self.tasks[change["task"]["id"]] = change["task"]
                self.etags[change["task"]["id"]] = change["etag"]
            else:
                self.tasks.pop(change["id"], None)
                self.etags.pop(change["id"], None)
        self.cursor = page["cursor"]
        return bool(page["has_more"])
