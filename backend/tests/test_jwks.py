"""JWKS verification against a real HTTP server publishing real public keys.

Covers each asymmetric algorithm, the allow-list, key/algorithm binding, rotation, the refetch rate
limit, outages of the JWKS endpoint, and the startup log line.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from tests.support import (
    SECRET,
    JWKSServer,
    KeyPair,
    assert_401,
    assert_problem,
    bearer,
    captured_logs,
    hs256_token,
    new_user,
)
from tests.support.apps import http_client, make_settings, running_app

# Token verification and key fetching: the database only stores the caller's tasks (tests/conftest.py).
pytestmark = pytest.mark.one_database

ALGORITHMS = ["EdDSA", "ES256", "ES512", "RS256", "PS256"]


@dataclass
class Env:
    """The running app, a client for it, and the JWKS server it trusts."""

    app: FastAPI
    client: httpx.AsyncClient
    server: JWKSServer


@asynccontextmanager
async def jwks_app(database_url: str, server: JWKSServer, **overrides: Any) -> AsyncIterator[Env]:
    """The app trusting `server`'s key set (JWKS only unless JWT_SECRET is passed)."""
    values: dict[str, Any] = {"JWT_JWKS_URL": server.url, "JWT_SECRET": None, **overrides}
    async with running_app(make_settings(database_url, **values)) as app, http_client(app) as client:
        yield Env(app, client, server)


async def status_of(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get("/api/tasks", headers=bearer(token))).status_code


def assert_503(response: httpx.Response, server: JWKSServer) -> None:
    assert_problem(response, 503)
    assert response.headers["retry-after"].isdigit()
    # Nothing about the endpoint (host, port, path) leaks to the client.
    port = server.url.split(":")[2].split("/")[0]
    assert port not in response.text and "127.0.0.1" not in response.text and "/api/auth" not in response.text


# --- each algorithm -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_create_with_each_algorithm_is_accepted(database_url: str, alg: str) -> None:
    key = KeyPair(alg)
    user = new_user()
    with JWKSServer([key]) as server:
        async with jwks_app(database_url, server) as env:
            created = await env.client.post("/api/tasks", json={"title": alg}, headers=bearer(key.sign(user)))
            assert created.status_code == 201, created.text
            assert created.json()["user_id"] == user
            listed = await env.client.get("/api/tasks", headers=bearer(key.sign(user)))
            assert [task["title"] for task in listed.json()["items"]] == [alg]


async def test_list_with_keys_of_every_algorithm_in_one_set_is_accepted(database_url: str) -> None:
    keys = [KeyPair(alg) for alg in ALGORITHMS]
    with JWKSServer(keys) as server:
        async with jwks_app(database_url, server) as env:
            for key in keys:
                assert await status_of(env.client, key.sign(new_user())) == 200, key.algorithm
            assert server.fetches == 1


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_list_with_algorithm_outside_allow_list_is_401(database_url: str, alg: str) -> None:
    keys = {name: KeyPair(name) for name in ALGORITHMS}
    allowed = [name for name in ALGORITHMS if name != alg]
    with JWKSServer(list(keys.values())) as server:
        async with jwks_app(database_url, server, JWT_ALGORITHMS=",".join(allowed)) as env:
            assert_401(await env.client.get("/api/tasks", headers=bearer(keys[alg].sign(new_user()))))
            for name in allowed:
                assert await status_of(env.client, keys[name].sign(new_user())) == 200, name


async def test_list_with_hs256_beside_jwks_is_accepted(database_url: str) -> None:
    key = KeyPair("EdDSA")
    user = new_user()
    with JWKSServer([key]) as server:
        async with jwks_app(database_url, server, JWT_SECRET=SECRET) as env:
            assert await status_of(env.client, hs256_token(user)) == 200
            assert await status_of(env.client, key.sign(user)) == 200
            # Both name the same user: the task created with one token is listed with the other.
            created = await env.client.post("/api/tasks", json={"title": "x"}, headers=bearer(hs256_token(user)))
            listed = await env.client.get("/api/tasks", headers=bearer(key.sign(user)))
            assert [task["id"] for task in listed.json()["items"]] == [created.json()["id"]]
            assert_401(await env.client.get("/api/tasks", headers=bearer(hs256_token(user, secret="x" * 40))))


async def test_list_with_hs256_when_jwks_only_is_401(database_url: str) -> None:
    with JWKSServer([KeyPair("EdDSA")]) as server:
        async with jwks_app(database_url, server) as env:
            assert_401(await env.client.get("/api/tasks", headers=bearer(hs256_token(new_user()))))


# --- a key is bound to its algorithm ------------------------------------------------------------


def _resign(key: KeyPair, alg: str, *, private_key: Any = None, kid: str | None = None) -> str:
    """A token claiming `alg`, under `key`'s kid, signed with `private_key` (default: `key`'s own)."""
    payload = {"sub": new_user(), "iat": int(time.time()), "exp": int(time.time()) + 600}
    signer = private_key if private_key is not None else key.private_key
    return jwt.encode(payload, signer, algorithm=alg, headers={"kid": kid or key.kid})


@pytest.mark.parametrize(
    ("published", "claimed"),
    [("RS256", "PS256"), ("PS256", "RS256")],
)
async def test_list_with_key_published_for_other_algorithm_is_401(
    database_url: str, published: str, claimed: str
) -> None:
    # The same private key really produces the other algorithm's signature (RSA signs PS256 and
    # RS256 alike); only the JWK's `alg` stands in the way.
    key = KeyPair(published)
    with JWKSServer([key]) as server:
        async with jwks_app(database_url, server) as env:
            assert await status_of(env.client, key.sign(new_user())) == 200
            assert_401(await env.client.get("/api/tasks", headers=bearer(_resign(key, claimed))))


@pytest.mark.parametrize(
    ("published", "claimed"),
    [("EdDSA", "ES256"), ("ES256", "RS256"), ("RS256", "ES256"), ("RS256", "EdDSA"), ("ES512", "PS256")],
)
async def test_list_with_key_of_other_type_is_401(database_url: str, published: str, claimed: str) -> None:
    # A JWK without `alg`, so only the key type separates the algorithms; the token is signed by a
    # real key of the claimed type and carries the published key's kid.
    key = KeyPair(published)
    del key.jwk["alg"]
    with JWKSServer([key]) as server:
        async with jwks_app(database_url, server) as env:
            assert await status_of(env.client, key.sign(new_user())) == 200
            token = _resign(key, claimed, private_key=KeyPair(claimed).private_key)
            assert_401(await env.client.get("/api/tasks", headers=bearer(token)))


# --- rotation -----------------------------------------------------------------------------------


async def test_rotation_accepts_new_kid_keeps_old_until_removed(database_url: str) -> None:
    old, new, stranger = KeyPair("EdDSA"), KeyPair("EdDSA"), KeyPair("EdDSA")
    user = new_user()
    with JWKSServer([old]) as server:
        async with jwks_app(database_url, server, JWT_JWKS_MIN_REFETCH_SECONDS=0) as env:
            old_token = old.sign(user)
            assert await status_of(env.client, old_token) == 200
            assert server.fetches == 1

            server.keys = [old, new]  # the auth server rotates: the new key is published beside the old
            new_token = new.sign(user)
            assert await status_of(env.client, new_token) == 200
            assert server.fetches == 2
            assert await status_of(env.client, old_token) == 200  # still published, still good
            assert server.fetches == 2  # known kids never refetch

            server.keys = [new]  # the old key's grace period ends
            assert await status_of(env.client, stranger.sign(user)) == 401  # an unknown kid refreshes the cache
            assert server.fetches == 3
            assert_401(await env.client.get("/api/tasks", headers=bearer(old_token)))
            assert await status_of(env.client, new_token) == 200


async def test_rotation_to_other_algorithm_is_accepted(database_url: str) -> None:
    old, new = KeyPair("RS256"), KeyPair("ES256")
    with JWKSServer([old]) as server:
        async with jwks_app(database_url, server, JWT_JWKS_MIN_REFETCH_SECONDS=0) as env:
            assert await status_of(env.client, old.sign(new_user())) == 200
            server.keys = [new, old]
            assert await status_of(env.client, new.sign(new_user())) == 200
            assert await status_of(env.client, old.sign(new_user())) == 200


@pytest.mark.slow
async def test_rotation_with_default_interval_accepts_new_kid_after_it(database_url: str) -> None:
    # The real 10 s default, no internals touched; run once (one_database: the JWKS path is the same per database).
    old, new = KeyPair("EdDSA"), KeyPair("EdDSA")
    with JWKSServer([old]) as server:
        async with jwks_app(database_url, server) as env:
            assert await status_of(env.client, old.sign(new_user())) == 200
            server.keys = [old, new]
            # Seen right after the last fetch, the new kid is not fetched yet: the rate limit holds.
            assert await status_of(env.client, new.sign(new_user())) == 401
            assert server.fetches == 1
            await asyncio.sleep(10.5)
            assert await status_of(env.client, new.sign(new_user())) == 200
            assert server.fetches == 2
            assert await status_of(env.client, old.sign(new_user())) == 200


# --- refetch rate limit -------------------------------------------------------------------------


async def test_unknown_kid_flood_fetches_at_most_twice(database_url: str) -> None:
    published, attacker = KeyPair("EdDSA"), KeyPair("EdDSA")
    with JWKSServer([published]) as server:
        async with jwks_app(database_url, server) as env:
            tokens = [attacker.sign(new_user(), headers={"kid": uuid.uuid4().hex}) for _ in range(50)]
            responses = await asyncio.gather(*(env.client.get("/api/tasks", headers=bearer(token)) for token in tokens))
            for response in responses:
                assert_401(response)
            assert 1 <= server.fetches <= 2
            fetches = server.fetches
            assert await status_of(env.client, published.sign(new_user())) == 200
            for token in tokens[:10]:  # sequentially, too
                assert await status_of(env.client, token) == 401
            assert server.fetches == fetches


# --- the JWKS endpoint failing -------------------------------------------------------------------

BROKEN_BODIES: dict[str, bytes] = {
    "broken_json": b'{"keys": [',
    "html": b"<html><body>502 Bad Gateway</body></html>",
    "not_utf8": b"\xff\xfe\x00{",
    "json_array": b"[]",
    "no_keys_member": b'{"jwks": []}',
    "keys_not_a_list": b'{"keys": {"kid": "a"}}',
    "empty_key_set": b'{"keys": []}',
    "only_unusable_keys": json.dumps(
        {
            "keys": [
                {"kty": "RSA", "kid": "a", "n": "!!", "e": "AQAB"},
                {"kty": "EC", "kid": "b", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
                {"kty": "OKP", "kid": "c", "crv": "Ed448", "x": "AAAA"},
                {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
                "not-an-object",
                None,
            ]
        }
    ).encode(),
}


@pytest.mark.parametrize("body", list(BROKEN_BODIES))
async def test_list_with_broken_jwks_document_is_503(database_url: str, body: str) -> None:
    key = KeyPair("EdDSA")
    with JWKSServer([key]) as server:
        server.body = BROKEN_BODIES[body]
        async with jwks_app(database_url, server) as env:
            assert_503(await env.client.get("/api/tasks", headers=bearer(key.sign(new_user()))), server)


@pytest.mark.parametrize("status", [404, 500, 502, 301])
async def test_list_with_jwks_error_status_is_503(database_url: str, status: int) -> None:
    key = KeyPair("EdDSA")
    with JWKSServer([key]) as server:
        server.status = status
        async with jwks_app(database_url, server) as env:
            assert_503(await env.client.get("/api/tasks", headers=bearer(key.sign(new_user()))), server)


async def test_list_with_jwks_server_down_at_first_use_is_503(database_url: str) -> None:
    key = KeyPair("EdDSA")
    server = JWKSServer([key])
    with server:
        pass  # bound, then closed: nothing listens on the port any more
    async with jwks_app(database_url, server, JWT_SECRET=SECRET) as env:
        response = await env.client.get("/api/tasks", headers=bearer(key.sign(new_user())))
        assert_503(response, server)
        # HS256 does not depend on the JWKS endpoint.
        assert await status_of(env.client, hs256_token(new_user())) == 200


async def test_list_with_jwks_entry_of_odd_types_uses_the_good_keys(database_url: str) -> None:
    key = KeyPair("ES256")
    odd = [
        {"kty": "RSA", "kid": "list-alg", "n": "AQAB", "e": "AQAB", "alg": ["RS256"]},
        {"kty": "EC", "kid": "list-crv", "crv": ["P-256"], "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "num-n", "n": 5, "e": "AQAB"},
        {"kty": "RSA", "kid": "enc-key", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": 7, "crv": "P-256", "x": "AAAA", "y": "AAAA"},
    ]
    with JWKSServer([key]) as server:
        server.body = json.dumps({"keys": [*odd, key.jwk]}).encode()
        async with jwks_app(database_url, server) as env:
            assert await status_of(env.client, key.sign(new_user())) == 200
            assert_401(
                await env.client.get("/api/tasks", headers=bearer(key.sign(new_user(), headers={"kid": "num-n"})))
            )


async def test_list_with_jwks_down_after_good_fetch_uses_cached_keys(database_url: str) -> None:
    key, stranger = KeyPair("EdDSA"), KeyPair("EdDSA")
    user = new_user()
    with JWKSServer([key]) as server:
        async with jwks_app(database_url, server, JWT_JWKS_MIN_REFETCH_SECONDS=0) as env:
            created = await env.client.post("/api/tasks", json={"title": "cached"}, headers=bearer(key.sign(user)))
            assert created.status_code == 201
            server.status = 500
            assert await status_of(env.client, key.sign(user)) == 200  # within the rate limit: no fetch at all

            assert_401(await env.client.get("/api/tasks", headers=bearer(stranger.sign(user))))  # not 503
            assert server.fetches == 2  # the refetch really happened, and failed
            assert await status_of(env.client, key.sign(user)) == 200  # the last good set is kept

            server.status = 200
            server.body = b"{broken"
            assert_401(await env.client.get("/api/tasks", headers=bearer(stranger.sign(user))))
            assert server.fetches == 3
            assert await status_of(env.client, key.sign(user)) == 200

            server.__exit__()  # gone entirely: connections are refused
            assert_401(await env.client.get("/api/tasks", headers=bearer(stranger.sign(user))))
            assert await status_of(env.client, key.sign(user)) == 200
            listed = await env.client.get("/api/tasks", headers=bearer(key.sign(user)))
            assert [task["id"] for task in listed.json()["items"]] == [created.json()["id"]]


async def test_list_with_jwks_recovering_after_outage_is_200(database_url: str) -> None:
    key = KeyPair("EdDSA")
    with JWKSServer([key]) as server:
        server.status = 503
        async with jwks_app(database_url, server, JWT_JWKS_MIN_REFETCH_SECONDS=0) as env:
            assert_503(await env.client.get("/api/tasks", headers=bearer(key.sign(new_user()))), server)
            server.status = 200
            assert await status_of(env.client, key.sign(new_user())) == 200


# --- startup log ------------------------------------------------------------------------------


async def test_startup_logs_active_modes_without_secret(database_url: str) -> None:
    with JWKSServer([KeyPair("EdDSA")]) as server, captured_logs() as lines:
        settings = make_settings(database_url, JWT_JWKS_URL=server.url, JWT_ALGORITHMS="EdDSA,RS256")
        async with running_app(settings):
            pass
    records = [json.loads(line) for line in lines]
    modes = [r["message"] for r in records if r["message"].startswith("token verification:")]
    assert len(modes) == 1
    assert "HS256 shared secret" in modes[0]
    assert f"JWKS {server.url}" in modes[0]
    assert "EdDSA" in modes[0] and "RS256" in modes[0] and "PS256" not in modes[0]
    assert all(SECRET not in line for line in lines)
    assert server.fetches == 0  # keys are fetched on first use, not at startup


async def test_startup_logs_jwks_only_mode(database_url: str) -> None:
    with JWKSServer([KeyPair("EdDSA")]) as server, captured_logs() as lines:
        async with running_app(make_settings(database_url, JWT_JWKS_URL=server.url, JWT_SECRET=None)):
            pass
    modes = [json.loads(line)["message"] for line in lines if "token verification:" in line]
    assert len(modes) == 1
    assert "shared secret" not in modes[0]
    assert f"JWKS {server.url}" in modes[0]


async def test_startup_logs_hs256_only_mode(database_url: str) -> None:
    secret = SECRET * 2  # HS512 needs 64 bytes
    with captured_logs() as lines:
        async with running_app(make_settings(database_url, JWT_ALGORITHM="HS512", JWT_SECRET=secret)):
            pass
    modes = [json.loads(line)["message"] for line in lines if "token verification:" in line]
    assert modes == ["token verification: HS512 shared secret"]
    assert all(SECRET not in line for line in lines)
