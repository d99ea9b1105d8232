"""Request body rules of app/schemas/task.py that have no better home: what a blank title is."""

from __future__ import annotations

import httpx
import pytest

from tests.support import assert_problem, auth, new_user

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
