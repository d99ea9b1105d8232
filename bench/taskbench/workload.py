"""Tokens, the Lua data file wrk reads, and the load profiles."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jwt

from taskbench.db import BIG_USER, SMALL_USER, Fixtures, user_id

TOKEN_TTL = 24 * 3600  # outlives the longest soak


@dataclass(frozen=True)
class Profile:
    name: str  # also the mode passed to lua/tasks.lua
    label: str
    writes: bool  # needs a DB reset afterwards


MAIN_PROFILES = [
    Profile("list", "GET /api/tasks?limit=20", writes=False),
    Profile("get", "GET /api/tasks/{id}", writes=False),
    Profile("create", "POST /api/tasks", writes=True),
    Profile("patch", "PATCH /api/tasks/{id}", writes=True),
    Profile("mixed", "mixed 70% read / 30% write", writes=True),
]
SCALE_PROFILES = [
    Profile("list_big", "first page, 100,000-task user", writes=False),
    Profile("list_small", "first page, 100-task user", writes=False),
    Profile("list_big_completed", "status=completed, 100,000-task user", writes=False),
    Profile("list_small_completed", "status=completed, 100-task user", writes=False),
]
# Only when the API pages by keyset (`next_cursor`): the 100,000-task user's page BENCH_KEYSET_PAGES deep.
KEYSET_PROFILE = Profile("list_big_deep", "keyset page deep in, 100,000-task user", writes=False)
MIXED = MAIN_PROFILES[-1]
# The agent door (POST /mcp, tools/call find_tasks with limit 20): ours only, the baseline has none.
# Read next to `list` above, which is the same query through GET /api/tasks?limit=20.
MCP_PROFILES = [
    Profile("mcp_find", "MCP find_tasks (limit 20), protocol 2026-07-28", writes=False),
    Profile(
        "mcp_find_legacy",
        "MCP find_tasks (limit 20), handshake-era request",
        writes=False,
    ),
]

# Ours only (the baseline has no change feed): an incremental poll that finds nothing new, next to
# the request it should cost about as much as.
SYNC_PROFILES = [
    Profile("get", "GET /api/tasks/{id}", writes=False),
    Profile("changes", "GET /api/tasks/changes?since=<current cursor>", writes=False),
]


def make_secret() -> str:
    # 64 url-safe chars: well above the app's 32-byte minimum for HS256.
    return secrets.token_urlsafe(48)


def make_token(secret: str, subject: str) -> str:
    claims = {"sub": subject, "exp": int(time.time()) + TOKEN_TTL}
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True)
class Workload:
    secret: str
    tokens: list[str]  # index i -> user_id(i)
    big_token: str
    small_token: str
    pairs: list[tuple[int, str]]


def build_workload(secret: str, fixtures: Fixtures) -> Workload:
    return Workload(
        secret=secret,
        tokens=[make_token(secret, user_id(i)) for i in range(fixtures.users)],
        big_token=make_token(secret, BIG_USER),
        small_token=make_token(secret, SMALL_USER),
        pairs=fixtures.pairs,
    )


def write_lua_data(
    workload: Workload,
    path: Path,
    cursors: list[str] | None = None,
    *,
    deep_cursor: str | None = None,
) -> None:
    """A Lua chunk returning the tokens, (token index, task id) pairs, each user's feed cursor and the
    query string of the deep keyset page."""
    # JSON string literals are valid Lua string literals for this ASCII data.
    tokens = ",\n".join(json.dumps(t) for t in workload.tokens)
    cursor_list = ",\n".join(json.dumps(c) for c in cursors or [])
    # Lua arrays are 1-based.
    pairs = ",\n".join(f"{{{i + 1},{json.dumps(t)}}}" for i, t in workload.pairs)
    path.write_text(
        "return {\n"
        f"tokens = {{\n{tokens}\n}},\n"
        f"pairs = {{\n{pairs}\n}},\n"
        f"big = {json.dumps(workload.big_token)},\n"
        f"small = {json.dumps(workload.small_token)},\n"
        f"cursors = {{\n{cursor_list}\n}},\n"
        f"deep = {json.dumps('&cursor=' + quote(deep_cursor, safe='') if deep_cursor else '')},\n"
        "}\n"
    )
