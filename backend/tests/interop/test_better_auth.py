"""Interop with a real Better Auth server (Node, better-auth 1.7.25).

Users sign up over HTTP and fetch their JWTs the way a Next.js frontend does (`/api/auth/token`
or the `set-auth-jwt` header of `/api/auth/get-session`); our API verifies them through Better
Auth's own `/api/auth/jwks`, with issuer and audience checked.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import jwt
import pytest
from fastapi import FastAPI
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import assert_401, bearer
from tests.support.apps import IN_CI, http_client, make_settings, running_app
from tests.support.betterauth import (
    BetterAuthServer,
    ensure_installed,
    fetch_jwks,
    get_token,
    sign_up,
    sign_up_and_get_token,
)

# Subprocesses and real servers: left out of `make test-fast`.
pytestmark = pytest.mark.slow

PASSWORD = "correct-horse-battery-staple-42"
OTHER_ALGORITHMS = ["ES256", "ES512", "RS256", "PS256"]


@dataclass(frozen=True)
class User:
    """A Better Auth user and a JWT minted for them."""

    id: str
    token: str


def _email() -> str:
    return f"user-{uuid.uuid4().hex}@example.test"


async def new_user(server: BetterAuthServer) -> User:
    """Sign up a fresh user over HTTP and fetch their JWT from GET /api/auth/token."""
    user_id, token = await asyncio.to_thread(sign_up_and_get_token, server.base_url, _email(), PASSWORD, "Test User")
    return User(user_id, token)


@dataclass
class Api:
    """Our app trusting one Better Auth server, and a client for it."""

    app: FastAPI
    client: httpx.AsyncClient

    async def get(self, path: str, token: str) -> httpx.Response:
        return await self.client.get(path, headers=bearer(token))


@asynccontextmanager
async def api_for(server: BetterAuthServer, database_url: str, **overrides: Any) -> AsyncIterator[Api]:
    """The app configured the stock Better Auth way: JWKS URL, issuer and audience, no shared secret."""
    values: dict[str, Any] = {
        "JWT_SECRET": None,
        "JWT_JWKS_URL": server.jwks_url,
        "JWT_ISSUER": server.issuer,
        "JWT_AUDIENCE": server.audience,
        **overrides,
    }
    settings = make_settings(database_url, **values)
    async with running_app(settings) as app, http_client(app) as client:
        yield Api(app, client)


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


# --- Better Auth servers (module-scoped: each start costs a Node process) -----------------------


@pytest.fixture(scope="module")
def harness() -> None:
    """Node and the pinned better-auth package; without Node the suite skips, except in CI."""
    if shutil.which("node") is None:
        if IN_CI:
            pytest.fail("node is not on PATH and CI=true: the Better Auth interop tests must run in CI")
        pytest.skip("node is not on PATH (the Better Auth interop tests need Node 20+)")
    ensure_installed()


@pytest.fixture(scope="module")
def better_auth(harness: None) -> Iterator[BetterAuthServer]:
    """A stock Better Auth server: EdDSA keys, 15 min tokens."""
    with BetterAuthServer() as server:
        yield server


@pytest.fixture(scope="module")
def short_lived(harness: None) -> Iterator[BetterAuthServer]:
    """Tokens that expire 2 s after they are minted."""
    with BetterAuthServer(expiration="2s") as server:
        yield server


@pytest.fixture(scope="module")
def impostor(better_auth: BetterAuthServer) -> Iterator[BetterAuthServer]:
    """Another Better Auth instance claiming the same issuer and audience, with its own keys."""
    with BetterAuthServer(issuer=better_auth.issuer, audience=better_auth.audience) as server:
        yield server


@pytest.fixture(scope="module")
def rotating(harness: None) -> Iterator[BetterAuthServer]:
    """Keys rotate every 2 s; retired keys stay published (Better Auth's default grace period)."""
    with BetterAuthServer(rotation_interval=2) as server:
        yield server


@pytest.fixture(scope="module")
def better_auth_with(harness: None) -> Iterator[Callable[[str], BetterAuthServer]]:
    """A Better Auth server per algorithm, started on first use and kept for the module."""
    with ExitStack() as stack:
        started: dict[str, BetterAuthServer] = {}

        def get(alg: str) -> BetterAuthServer:
            if alg not in started:
                started[alg] = stack.enter_context(BetterAuthServer(alg=alg))
            return started[alg]

        yield get


# Token verification only (expiry, issuer, audience, keys): the database cannot change the outcome,
# so these run on the first database only (tests/conftest.py). The tests that store and list tasks
# of Better Auth users run on both.
one_database = pytest.mark.one_database


# --- a stock setup end to end -------------------------------------------------------------------


async def test_tasks_with_better_auth_tokens_are_created_listed_and_isolated(
    better_auth: BetterAuthServer, database_url: str
) -> None:
    alice = await new_user(better_auth)
    # Bob's token comes from the other frontend path: the set-auth-jwt header of get-session.
    bob_session = await asyncio.to_thread(sign_up, better_auth.base_url, _email(), PASSWORD, "Bob")
    bob = User(bob_session.user_id, await asyncio.to_thread(get_token, bob_session, from_session_header=True))
    assert alice.id != bob.id
    assert jwt.get_unverified_header(alice.token)["alg"] == "EdDSA"

    async with api_for(better_auth, database_url) as api:
        created = await api.client.post("/api/tasks", json={"title": "alice's"}, headers=bearer(alice.token))
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["user_id"] == alice.id
        bobs = await api.client.post("/api/tasks", json={"title": "bob's"}, headers=bearer(bob.token))
        assert bobs.status_code == 201, bobs.text
        assert bobs.json()["user_id"] == bob.id

        alice_list = (await api.get("/api/tasks", alice.token)).json()
        bob_list = (await api.get("/api/tasks", bob.token)).json()
        assert [t["id"] for t in alice_list["items"]] == [task["id"]]
        assert [t["id"] for t in bob_list["items"]] == [bobs.json()["id"]]

        url = f"/api/tasks/{task['id']}"
        as_bob = bearer(bob.token)
        assert (await api.client.get(url, headers=as_bob)).status_code == 403
        assert (await api.client.patch(url, json={"title": "mine now"}, headers=as_bob)).status_code == 403
        assert (await api.client.put(url, json={"title": "mine now"}, headers=as_bob)).status_code == 403
        assert (await api.client.delete(url, headers=as_bob)).status_code == 403

        # Alice's task is untouched, and Alice can still change and delete it.
        mine = await api.get(url, alice.token)
        assert mine.status_code == 200
        assert mine.json()["title"] == "alice's"
        patched = await api.client.patch(url, json={"status": "completed"}, headers=bearer(alice.token))
        assert patched.status_code == 200
        assert (await api.client.delete(url, headers=bearer(alice.token))).status_code == 204


@one_database
async def test_list_with_token_from_second_sign_in_is_accepted(
    better_auth: BetterAuthServer, database_url: str
) -> None:
    # A fresh token minted later for the same session still names the same user.
    session = await asyncio.to_thread(sign_up, better_auth.base_url, _email(), PASSWORD, "Carol")
    first = await asyncio.to_thread(get_token, session)
    async with api_for(better_auth, database_url) as api:
        created = await api.client.post("/api/tasks", json={"title": "carol's"}, headers=bearer(first))
        second = await asyncio.to_thread(get_token, session)
        listed = (await api.get("/api/tasks", second)).json()
        assert [t["id"] for t in listed["items"]] == [created.json()["id"]]


@one_database
async def test_list_with_expired_better_auth_token_is_401(short_lived: BetterAuthServer, database_url: str) -> None:
    user = await new_user(short_lived)
    # No leeway, so the test need not wait the default 30 s past expiry.
    async with api_for(short_lived, database_url, JWT_LEEWAY=0) as api:
        assert (await api.get("/api/tasks", user.token)).status_code == 200
        expires_at = jwt.decode(user.token, options={"verify_signature": False})["exp"]
        await asyncio.sleep(max(0.0, expires_at + 1 - time.time()))
        assert_401(await api.get("/api/tasks", user.token))


@one_database
async def test_list_with_token_from_other_better_auth_instance_is_401(
    better_auth: BetterAuthServer, impostor: BetterAuthServer, database_url: str
) -> None:
    stranger = await new_user(impostor)
    claims = jwt.decode(stranger.token, options={"verify_signature": False})
    # Same issuer and audience: only the keys tell the instances apart.
    assert (claims["iss"], claims["aud"]) == (better_auth.issuer, better_auth.audience)
    async with api_for(better_auth, database_url) as api:
        assert (await api.get("/api/tasks", (await new_user(better_auth)).token)).status_code == 200
        assert_401(await api.get("/api/tasks", stranger.token))


@one_database
async def test_list_with_token_for_other_audience_is_401(better_auth: BetterAuthServer, database_url: str) -> None:
    user = await new_user(better_auth)
    async with api_for(better_auth, database_url, JWT_AUDIENCE="https://another-api.example.test") as api:
        assert_401(await api.get("/api/tasks", user.token))
    async with api_for(better_auth, database_url, JWT_ISSUER="https://another-auth.example.test") as api:
        assert_401(await api.get("/api/tasks", user.token))


@one_database
async def test_rotation_of_better_auth_keys_is_survived(rotating: BetterAuthServer, database_url: str) -> None:
    session = await asyncio.to_thread(sign_up, rotating.base_url, _email(), PASSWORD, "Dana")
    old_token = await asyncio.to_thread(get_token, session)
    async with api_for(rotating, database_url, JWT_JWKS_MIN_REFETCH_SECONDS=0) as api:
        assert (await api.get("/api/tasks", old_token)).status_code == 200

        new_token = old_token
        for _ in range(40):  # rotation is lazy: the first signing after the 2 s interval mints a key
            if kid_of(new_token) != kid_of(old_token):
                break
            await asyncio.sleep(0.5)
            new_token = await asyncio.to_thread(get_token, session)
        assert kid_of(new_token) != kid_of(old_token), "Better Auth did not rotate its key"
        published = {key["kid"] for key in (await asyncio.to_thread(fetch_jwks, rotating.base_url))["keys"]}
        assert {kid_of(old_token), kid_of(new_token)} <= published

        assert (await api.get("/api/tasks", new_token)).status_code == 200
        assert (await api.get("/api/tasks", old_token)).status_code == 200  # still published
        created = await api.client.post("/api/tasks", json={"title": "rotated"}, headers=bearer(new_token))
        listed = (await api.get("/api/tasks", old_token)).json()
        assert [t["id"] for t in listed["items"]] == [created.json()["id"]]


@one_database
@pytest.mark.parametrize("alg", OTHER_ALGORITHMS)
async def test_create_with_better_auth_token_of_each_algorithm_is_accepted(
    better_auth_with: Callable[[str], BetterAuthServer], database_url: str, alg: str
) -> None:
    server = await asyncio.to_thread(better_auth_with, alg)
    user = await new_user(server)
    assert jwt.get_unverified_header(user.token)["alg"] == alg
    async with api_for(server, database_url) as api:
        created = await api.client.post("/api/tasks", json={"title": alg}, headers=bearer(user.token))
        assert created.status_code == 201, created.text
        assert created.json()["user_id"] == user.id
        listed = (await api.get("/api/tasks", user.token)).json()
        assert [t["title"] for t in listed["items"]] == [alg]


@one_database
@pytest.mark.parametrize("alg", OTHER_ALGORITHMS)
async def test_list_with_better_auth_algorithm_outside_allow_list_is_401(
    better_auth_with: Callable[[str], BetterAuthServer], database_url: str, alg: str
) -> None:
    server = await asyncio.to_thread(better_auth_with, alg)
    user = await new_user(server)
    async with api_for(server, database_url, JWT_ALGORITHMS="EdDSA") as api:
        assert_401(await api.get("/api/tasks", user.token))


async def test_find_tasks_over_mcp_with_better_auth_token(better_auth: BetterAuthServer, database_url: str) -> None:
    # An agent handed the user's Better Auth JWT reaches exactly that user's tasks through /mcp.
    alice, bob = await new_user(better_auth), await new_user(better_auth)
    async with api_for(better_auth, database_url) as api:
        mine = await api.client.post("/api/tasks", json={"title": "from the web app"}, headers=bearer(alice.token))
        assert mine.status_code == 201, mine.text
        await api.client.post("/api/tasks", json={"title": "bob's"}, headers=bearer(bob.token))
        transport = httpx2.ASGITransport(app=api.app)
        async with (
            httpx2.AsyncClient(transport=transport, headers=bearer(alice.token)) as http,
            Client(streamable_http_client("http://127.0.0.1/mcp", http_client=http)) as client,
        ):
            result = await client.call_tool("find_tasks", {})
        assert not result.is_error, result.content
        assert isinstance(result.structured_content, dict)
        assert result.structured_content["items"] == [mine.json()]
        # The RFC 9728 document names Better Auth as the authorization server.
        metadata = (await api.client.get("/.well-known/oauth-protected-resource/mcp")).json()
        assert metadata["authorization_servers"] == [better_auth.issuer]
