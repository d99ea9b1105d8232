"""The one rendering of a task, the contract's string rules against the validators, and what a
blank title is.

render_task/render_page must give exactly the bytes pydantic gives for TaskRead/TaskPage, and every
pattern the contract publishes must accept exactly what the server accepts.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.models.task import TASK_FIELDS, TaskRow
from app.schemas.task import (
    NO_NUL_PATTERN,
    RFC3339_PATTERN,
    TITLE_PATTERN,
    TaskCreate,
    TaskListQuery,
    TaskPage,
    TaskRead,
    render_page,
    render_task,
    task_json,
)
from tests.support import assert_problem, auth, new_user


def task_row(**fields: Any) -> TaskRow:
    now = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "title": "t",
        "description": None,
        "status": "pending",
        "priority": "medium",
        "due_date": None,
        "user_id": "user-1",
        "created_at": now,
        "updated_at": now,
        **fields,
    }
    return cast(TaskRow, values)


ROWS = {
    "minimal": task_row(),
    "every-field": task_row(
        description="d", status="completed", priority="high", due_date=datetime(2026, 12, 1, 8, tzinfo=UTC)
    ),
    "non-ascii": task_row(title="漢字 🚀 \u202eevil\u202c", description='"quotes" \\ \n\t\u2028 é', user_id="ü"),
    "odd-times": task_row(
        due_date=datetime(1, 1, 1, tzinfo=UTC),
        created_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ),
    "other-offset": task_row(due_date=datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=-3))).astimezone(UTC)),
}


def test_task_fields_are_the_public_fields_of_task_read() -> None:
    assert tuple(TaskRead.model_fields) == TASK_FIELDS


@pytest.mark.parametrize("name", list(ROWS))
def test_render_task_is_byte_identical_to_task_read(name: str) -> None:
    row = ROWS[name]
    assert render_task(row) == TaskRead.model_validate(row).model_dump_json().encode()
    assert task_json(row) == TaskRead.model_validate(row).model_dump(mode="json")


def test_render_page_is_byte_identical_to_task_page() -> None:
    items = list(ROWS.values())
    expected = TaskPage.model_validate({"items": items, "total": 7, "limit": 5, "offset": 2}).model_dump_json()
    assert render_page(items, total=7, limit=5, offset=2) == expected.encode()


# --- the published patterns mean what the validators do -----------------------------------------

# Characters around the edges of each rule: blanks, controls, format characters, NUL, astral text.
BLANKS = [" ", "\t", "\n", "\x00", "\x1c", "\x85", "\xa0", "\xad", "\u200b", "\u2060", "\ufeff", "\u3000", "\u3164"]
VISIBLE = ["a", "é", "漢", "🚀", "\U000e0001", "\u0301"]
EDGE_CHARACTERS = st.sampled_from([*BLANKS, *VISIBLE])
TEXT = st.text(EDGE_CHARACTERS | st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None, database=None)
@given(title=TEXT)
def test_title_pattern_accepts_exactly_what_the_server_accepts(title: str) -> None:
    try:
        TaskCreate.model_validate({"title": title})
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == (re.fullmatch(TITLE_PATTERN, title) is not None), ascii(title)


@settings(max_examples=200, deadline=None, database=None)
@given(text=TEXT)
def test_no_nul_pattern_accepts_exactly_what_the_server_accepts(text: str) -> None:
    try:
        TaskListQuery.model_validate({"q": text})
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == (re.fullmatch(NO_NUL_PATTERN, text) is not None), ascii(text)


def rfc3339_strings() -> st.SearchStrategy[str]:
    """Date-times in RFC 3339's shape with every offset and fraction, plus near misses."""
    offsets = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+23:59", "-23:59", "+05:30", "", "+24:00", "+0530"])
    fractions = st.sampled_from(["", ".5", ".123456", ".1234567891"])
    separators = st.sampled_from(["T", "t", " "])
    seconds = st.sampled_from(["00", "59", "60"])
    return st.builds(
        lambda d, sep, time, sec, frac, off: f"{d.isoformat()}{sep}{time}:{sec}{frac}{off}",
        st.dates(),
        separators,
        st.sampled_from(["00:00", "12:34", "23:59"]),
        seconds,
        fractions,
        offsets,
    )


@settings(max_examples=400, deadline=None, database=None)
@given(value=rfc3339_strings())
def test_rfc3339_pattern_accepts_exactly_what_the_server_accepts(value: str) -> None:
    try:
        parsed = TaskListQuery.model_validate({"due_before": value}).due_before
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == (re.fullmatch(RFC3339_PATTERN, value) is not None), value
    if accepted:
        assert parsed is not None and parsed.utcoffset() == timedelta(0)


# --- blank titles through the API ---------------------------------------------------------------

INVISIBLE_TITLES = {
    "zero-width-space": "\u200b",
    "word-joiner": "\u2060",
    "bom": "\ufeff",
    "mixed-format-and-spaces": " \u200b\u2060\ufeff\u00a0\u3000\t",
    "hangul-filler": "\u3164",
    "soft-hyphen": "\u00ad",
    "variation-selector": "\ufe0f",
}


@pytest.mark.parametrize("title", INVISIBLE_TITLES.values(), ids=INVISIBLE_TITLES.keys())
async def test_invisible_title_is_blank(client: httpx.AsyncClient, title: str) -> None:
    user = auth(new_user())
    created = await client.post("/api/tasks", json={"title": title}, headers=user)
    body = assert_problem(created, 422)
    assert body["errors"] == [{"loc": ["body", "title"], "msg": "must not be blank", "type": "value_error"}]
    existing = await client.post("/api/tasks", json={"title": "visible"}, headers=user)
    patched = await client.patch(f"/api/tasks/{existing.json()['id']}", json={"title": title}, headers=user)
    assert assert_problem(patched, 422)["errors"][0]["msg"] == "must not be blank"


@pytest.mark.parametrize("title", ["a\u200b", "\u200bx\u200b", "\u3164\u3131", "🙂"])
async def test_title_with_something_visible_is_kept(client: httpx.AsyncClient, title: str) -> None:
    created = await client.post("/api/tasks", json={"title": title}, headers=auth(new_user()))
    assert created.status_code == 201, created.text
    assert created.json()["title"] == title
