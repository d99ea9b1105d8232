"""Bearer authentication: every /api route needs a token, and every bad token is a 401 problem+json.

The tokens are real (PyJWT, or hand-assembled and HMAC-signed for the malformed cases PyJWT refuses
to produce); the JWKS cases use a real HTTP server publishing real public keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from tests.support import SECRET, JWKSServer, KeyPair, assert_401, assert_problem, auth, bearer, hs256_token, new_user
from tests.support.apps import http_client, make_settings, running_app

CHALLENGE = 'Bearer realm="tasks"'
OTHER_SECRET = "another-secret-that-is-also-long-enough-0123456789"
ISSUER = "https://auth.example.test"
AUDIENCE = "https://api.example.test"
HTTP_METHODS = frozenset({"get", "post", "put", "patch", "delete", "head", "options"})


def b64url(data: bytes) -> str:
    """Unpadded base64url, as in a JWS."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any],
    payload: dict[str, Any],
    key: bytes | None = None,
    *,
    signature: str = "",
    digest: Callable[[], Any] = hashlib.sha256,
) -> str:
    """A compact JWS with exactly this header, HMAC-signed with `key` by hand (SHA-256 by default).

    PyJWT refuses to build some of the tokens an attacker would send (HMAC with a PEM public key,
    `alg: none`), so they are assembled here byte by byte.
    """
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    if key is not None:
        signature = b64url(hmac.new(key, signing_input.encode(), digest).digest())
    return f"{signing_input}.{signature}"


def claims(sub: str | None, *, exp_in: int = 600, **extra: Any) -> dict[str, Any]:
    """A payload for `sub` (None leaves it out) that expires in `exp_in` seconds."""
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + exp_in, **extra}
    if sub is not None:
        payload["sub"] = sub
    return payload


def assert_invalid_token(response: httpx.Response, token: str) -> None:
    """A 401 problem+json with an `invalid_token` challenge that does not echo the token."""
    body = assert_401(response)
    assert response.headers["www-authenticate"].startswith(CHALLENGE)
    assert body["title"] == "Unauthorized"
    assert isinstance(body["detail"], str) and body["detail"]
    echoed = response.text + "\n".join(response.headers.values())
    for part in (token, *token.split(".")):
        if len(part) >= 8:
            assert part not in echoed


def assert_challenge_without_error(response: httpx.Response) -> None:
    """RFC 6750 3.1: no credentials -> the bare challenge, no error code."""
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == CHALLENGE


def api_requests(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every operation under /api, path parameters filled with a uuid."""
    requests: list[tuple[str, str]] = []
    for template, operations in app.openapi()["paths"].items():
        if template.startswith("/api"):
            path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
            requests.extend((method.upper(), path) for method in sorted(operations) if method in HTTP_METHODS)
    return requests


async def send(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {"title": "auth probe"} if method in ("POST", "PUT", "PATCH") else None
    return await client.request(method, path, json=body, headers=headers)


# --- no credentials at all -------------------------------------------------------------------


async def test_api_routes_are_all_covered(app: FastAPI) -> None:
    covered = {(method, re.sub(r"[0-9a-f-]{36}", "{id}", path)) for method, path in api_requests(app)}
    assert covered >= {
        ("GET", "/api/tasks"),
        ("POST", "/api/tasks"),
        ("GET", "/api/tasks/{id}"),
        ("PUT", "/api/tasks/{id}"),
        ("PATCH", "/api/tasks/{id}"),
        ("DELETE", "/api/tasks/{id}"),
    }


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic dXNlcjpwYXNzd29yZA==", "Bearer", "Bearer ", "Token abc.def.ghi", "Digest username=x"],
    ids=["missing", "empty", "basic", "bearer_no_token", "bearer_blank", "token_scheme", "digest"],
)
async def test_api_routes_without_bearer_are_401(
    app: FastAPI, client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in api_requests(app):
        response = await send(client, method, path, headers)
        assert_challenge_without_error(response)


async def test_api_routes_with_basic_carrying_a_valid_jwt_are_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    # Only the Bearer scheme counts, even when the credentials would be a good token.
    token = hs256_token(new_user())
    for method, path in api_requests(app):
        response = await send(client, method, path, {"Authorization": f"Basic {token}"})
        assert_challenge_without_error(response)
        assert token not in response.text


async def test_api_routes_with_bad_token_are_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    token = hs256_token(new_user(), secret=OTHER_SECRET)
    for method, path in api_requests(app):
        assert_invalid_token(await send(client, method, path, bearer(token)), token)


async def test_list_with_valid_token_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tasks", headers=auth(new_user()))
    assert response.status_code == 200
    assert response.json()["items"] == []


async def test_list_with_lowercase_bearer_scheme_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tasks", headers={"Authorization": f"bearer {hs256_token(new_user())}"})
    assert response.status_code == 200


# --- HS256 tokens that must not pass -----------------------------------------------------------


def _tampered(user: str) -> str:
    header, _, signature = hs256_token(user).split(".")
    payload = b64url(json.dumps(claims(new_user())).encode())
    return f"{header}.{payload}.{signature}"


def _none_signed_with_valid_signature(user: str) -> str:
    valid_signature = hs256_token(user).split(".")[2]
    return forge({"alg": "none", "typ": "JWT"}, claims(user), signature=valid_signature)


BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "wrong_secret": lambda user: hs256_token(user, secret=OTHER_SECRET),
    "tampered_payload": _tampered,
    "signature_stripped": lambda user: hs256_token(user).rsplit(".", 1)[0] + ".",
    "signature_of_other_token": lambda user: ".".join(
        [*hs256_token(user).split(".")[:2], hs256_token(new_user()).split(".")[2]]
    ),
    "expired": lambda user: hs256_token(user, exp_in=-120),
    "expired_long_ago": lambda user: hs256_token(user, exp_in=-86400),
    "nbf_in_future": lambda user: hs256_token(user, nbf=int(time.time()) + 120),
    "no_exp": lambda user: jwt.encode({"sub": user, "iat": int(time.time())}, SECRET, algorithm="HS256"),
    "exp_not_a_number": lambda user: forge({"alg": "HS256"}, claims(user) | {"exp": "tomorrow"}, SECRET.encode()),
    "no_sub_no_user_id": lambda user: hs256_token(None),
    "empty_sub": lambda user: hs256_token(""),
    "blank_sub": lambda user: hs256_token("   "),
    "numeric_sub": lambda user: forge({"alg": "HS256"}, claims(None) | {"sub": 12345}, SECRET.encode()),
    "sub_with_nul": lambda user: hs256_token(f"{user}\x00admin"),
    "sub_too_long": lambda user: hs256_token("u" * 256),
    "empty_user_id_no_sub": lambda user: hs256_token(None, user_id=""),
    "object_user_id_no_sub": lambda user: hs256_token(None, user_id={"id": user}),
    "alg_none_empty_signature": lambda user: forge({"alg": "none", "typ": "JWT"}, claims(user)),
    "alg_none_no_signature_part": lambda user: forge({"alg": "none", "typ": "JWT"}, claims(user)).rstrip("."),
    "alg_none_with_signature": _none_signed_with_valid_signature,
    "alg_None_capitalised": lambda user: forge({"alg": "None"}, claims(user)),
    "alg_missing": lambda user: forge({"typ": "JWT"}, claims(user), SECRET.encode()),
    "alg_list": lambda user: forge({"alg": ["HS256"]}, claims(user), SECRET.encode()),
    "hs384_same_secret": lambda user: jwt.encode(claims(user), SECRET, algorithm="HS384"),
    "hs512_same_secret": lambda user: forge({"alg": "HS512"}, claims(user), SECRET.encode(), digest=hashlib.sha512),
    "crit_unknown_extension": lambda user: forge(
        {"alg": "HS256", "crit": ["https://example.test/ext"], "https://example.test/ext": True},
        claims(user),
        SECRET.encode(),
    ),
    "crit_b64": lambda user: forge({"alg": "HS256", "crit": ["b64"], "b64": True}, claims(user), SECRET.encode()),
    "crit_empty": lambda user: forge({"alg": "HS256", "crit": []}, claims(user), SECRET.encode()),
    "16kb_token": lambda user: hs256_token(user, padding="x" * 16 * 1024),
    "token_over_8kb": lambda user: hs256_token(user, padding="x" * 8192),
    "not_a_jwt": lambda user: "not-a-jwt",
    "dots_only": lambda user: "..",
    "four_segments": lambda user: hs256_token(user) + ".extra",
    "header_not_json": lambda user: "bm90IGpzb24." + hs256_token(user).split(".", 1)[1],
    "header_json_array": lambda user: b64url(b'["HS256"]') + "." + hs256_token(user).split(".", 1)[1],
    "payload_not_json": lambda user: forge({"alg": "HS256"}, {}, SECRET.encode()).split(".")[0] + ".bm90IGpzb24.sig",
    "bad_base64": lambda user: "eyJ!!!.eyJ$$$.***",
    "kid_not_a_string": lambda user: forge({"alg": "HS256", "kid": 7}, claims(user), SECRET.encode()),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_list_with_bad_token_is_401(client: httpx.AsyncClient, case: str) -> None:
    user = new_user()
    token = BAD_TOKENS[case](user)
    response = await client.get("/api/tasks", headers=bearer(token))
    assert_invalid_token(response, token)


@pytest.mark.parametrize(
    "raw",
    [
        "Bearer é.ü.ß".encode(),
        b"Bearer \xff\xfe\xfd.\x80\x81.\xc3",
        "Bearer 令牌.令牌.令牌".encode(),
        b"Bearer eyJhbGciOiJIUzI1NiJ9.\xe2\x98\x83.sig",
    ],
    ids=["latin1", "invalid_utf8", "cjk_utf8", "snowman_payload"],
)
async def test_list_with_non_ascii_token_is_401(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.get("/api/tasks", headers=[(b"Authorization", raw)])
    token = raw.decode("latin-1").removeprefix("Bearer ")
    assert_invalid_token(response, token)


async def test_create_with_bad_token_stores_nothing(client: httpx.AsyncClient) -> None:
    user = new_user()
    token = hs256_token(user, secret=OTHER_SECRET)
    assert_invalid_token(await client.post("/api/tasks", json={"title": "x"}, headers=bearer(token)), token)
    listed = await client.get("/api/tasks", headers=auth(user))
    assert listed.json()["total"] == 0


# --- which claim names the user ----------------------------------------------------------------


async def test_create_with_user_id_claim_and_no_sub_uses_user_id(client: httpx.AsyncClient) -> None:
    user = new_user()
    headers = bearer(hs256_token(None, user_id=user))
    created = await client.post("/api/tasks", json={"title": "mine"}, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == user
    listed = await client.get("/api/tasks", headers=auth(user))
    assert [task["id"] for task in listed.json()["items"]] == [created.json()["id"]]


async def test_create_with_sub_and_user_id_uses_sub(client: httpx.AsyncClient) -> None:
    user, other = new_user(), new_user()
    created = await client.post("/api/tasks", json={"title": "x"}, headers=bearer(hs256_token(user, user_id=other)))
    assert created.status_code == 201
    assert created.json()["user_id"] == user
    assert (await client.get("/api/tasks", headers=auth(other))).json()["total"] == 0


async def test_list_with_longest_allowed_sub_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tasks", headers=bearer(hs256_token(f"{new_user()}-".ljust(255, "x"))))
    assert response.status_code == 200


# --- leeway ------------------------------------------------------------------------------------


async def test_list_with_token_expired_within_leeway_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tasks", headers=bearer(hs256_token(new_user(), exp_in=-10)))
    assert response.status_code == 200


async def test_list_with_nbf_within_leeway_is_200(client: httpx.AsyncClient) -> None:
    token = hs256_token(new_user(), nbf=int(time.time()) + 10)
    assert (await client.get("/api/tasks", headers=bearer(token))).status_code == 200


async def test_list_with_token_expired_beyond_leeway_is_401(client: httpx.AsyncClient) -> None:
    token = hs256_token(new_user(), exp_in=-120)
    assert_invalid_token(await client.get("/api/tasks", headers=bearer(token)), token)


async def test_list_with_zero_leeway_rejects_just_expired_token(database_url: str) -> None:
    token = hs256_token(new_user(), exp_in=-10)
    async with running_app(make_settings(database_url, JWT_LEEWAY=0)) as app, http_client(app) as client:
        assert_invalid_token(await client.get("/api/tasks", headers=bearer(token)), token)


# --- issuer and audience -----------------------------------------------------------------------


ISS_AUD_CASES: dict[str, tuple[dict[str, Any], int]] = {
    "right": ({"iss": ISSUER, "aud": AUDIENCE}, 200),
    "aud_list_containing_ours": ({"iss": ISSUER, "aud": ["https://other.test", AUDIENCE]}, 200),
    "wrong_iss": ({"iss": "https://evil.test", "aud": AUDIENCE}, 401),
    "iss_with_trailing_slash": ({"iss": ISSUER + "/", "aud": AUDIENCE}, 401),
    "missing_iss": ({"aud": AUDIENCE}, 401),
    "wrong_aud": ({"iss": ISSUER, "aud": "https://other.test"}, 401),
    "aud_list_without_ours": ({"iss": ISSUER, "aud": ["https://other.test"]}, 401),
    "missing_aud": ({"iss": ISSUER}, 401),
    "missing_both": ({}, 401),
}


@pytest.mark.parametrize("case", list(ISS_AUD_CASES))
async def test_list_with_issuer_and_audience_configured_checks_them(database_url: str, case: str) -> None:
    extra, expected = ISS_AUD_CASES[case]
    token = hs256_token(new_user(), **extra)
    settings = make_settings(database_url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    async with running_app(settings) as app, http_client(app) as client:
        response = await client.get("/api/tasks", headers=bearer(token))
    if expected == 200:
        assert response.status_code == 200, response.text
    else:
        assert_invalid_token(response, token)


@pytest.mark.parametrize(
    ("setting", "claim"), [("JWT_ISSUER", "iss"), ("JWT_AUDIENCE", "aud")], ids=["issuer_only", "audience_only"]
)
async def test_list_with_one_of_issuer_audience_configured_checks_it(
    database_url: str, setting: str, claim: str
) -> None:
    value = ISSUER if claim == "iss" else AUDIENCE
    right: dict[str, Any] = {claim: value}
    wrong: dict[str, Any] = {claim: "https://evil.test"}
    good, bad, missing = hs256_token(new_user(), **right), hs256_token(new_user(), **wrong), hs256_token(new_user())
    async with running_app(make_settings(database_url, **{setting: value})) as app, http_client(app) as client:
        assert (await client.get("/api/tasks", headers=bearer(good))).status_code == 200
        assert_invalid_token(await client.get("/api/tasks", headers=bearer(bad)), bad)
        assert_invalid_token(await client.get("/api/tasks", headers=bearer(missing)), missing)


async def test_list_without_issuer_configured_ignores_iss(client: httpx.AsyncClient) -> None:
    token = hs256_token(new_user(), iss="https://anyone.test", aud="https://anything.test")
    assert (await client.get("/api/tasks", headers=bearer(token))).status_code == 200


# --- HS256 beside a JWKS: key confusion, kid, jku/x5u/jwk ---------------------------------------


@dataclass
class JWKSApp:
    """The app with HS256 (optionally) and a JWKS publishing one RSA and one Ed25519 key."""

    client: httpx.AsyncClient
    server: JWKSServer
    rsa: KeyPair
    ed: KeyPair


@asynccontextmanager
async def jwks_app(database_url: str, *, with_secret: bool = True) -> AsyncIterator[JWKSApp]:
    rsa, ed = KeyPair("RS256"), KeyPair("EdDSA")
    with JWKSServer([rsa, ed]) as server:
        settings = make_settings(database_url, JWT_JWKS_URL=server.url, JWT_SECRET=SECRET if with_secret else None)
        async with running_app(settings) as app, http_client(app) as client:
            yield JWKSApp(client, server, rsa, ed)


def _public_key_encodings(pair: KeyPair) -> dict[str, bytes]:
    public = pair.private_key.public_key()
    encodings = {
        "spki_pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "spki_der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk_json": json.dumps(pair.jwk).encode(),
        "jwk_json_compact": json.dumps(pair.jwk, separators=(",", ":")).encode(),
    }
    if pair.algorithm == "RS256":
        encodings["pkcs1_pem"] = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    else:
        encodings["raw"] = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return encodings


@pytest.mark.parametrize("with_secret", [True, False], ids=["hs256_and_jwks", "jwks_only"])
@pytest.mark.parametrize("key", ["rsa", "ed"])
async def test_list_with_hs256_signed_by_jwks_public_key_is_401(database_url: str, with_secret: bool, key: str) -> None:
    async with jwks_app(database_url, with_secret=with_secret) as env:
        pair = env.rsa if key == "rsa" else env.ed
        # The key really is published and usable for its own algorithm.
        assert (await env.client.get("/api/tasks", headers=bearer(pair.sign(new_user())))).status_code == 200
        for name, secret in _public_key_encodings(pair).items():
            for header in ({"alg": "HS256", "kid": pair.kid, "typ": "JWT"}, {"alg": "HS256", "typ": "JWT"}):
                token = forge(header, claims(new_user()), secret)
                response = await env.client.get("/api/tasks", headers=bearer(token))
                assert response.status_code == 401, name
                assert_invalid_token(response, token)


async def test_list_with_unknown_kid_is_401(database_url: str) -> None:
    async with jwks_app(database_url) as env:
        stranger = KeyPair("RS256")
        token = stranger.sign(new_user())
        assert_invalid_token(await env.client.get("/api/tasks", headers=bearer(token)), token)
        # A published key's kid on a token signed by another key: the signature check catches it.
        forged = stranger.sign(new_user(), headers={"kid": env.rsa.kid})
        assert_invalid_token(await env.client.get("/api/tasks", headers=bearer(forged)), forged)


async def test_list_with_asymmetric_token_without_kid_is_401(database_url: str) -> None:
    async with jwks_app(database_url) as env:
        token = jwt.encode(claims(new_user()), env.ed.private_key, algorithm="EdDSA")
        assert_invalid_token(await env.client.get("/api/tasks", headers=bearer(token)), token)


HOSTILE_KIDS = [
    "../../../../etc/passwd",
    "..%2f..%2fadmin",
    "' OR '1'='1' --",
    "x'; DROP TABLE tasks; --",
    "http://127.0.0.1:1/jwks.json",
    "file:///dev/zero",
    "kid\x00null",
    "a\\b\r\nX-Injected: 1",
    "",
    "k" * 257,
]


async def test_list_with_hostile_kid_is_401(database_url: str) -> None:
    async with jwks_app(database_url) as env:
        for kid in HOSTILE_KIDS:
            token = env.rsa.sign(new_user(), headers={"kid": kid})
            assert_invalid_token(await env.client.get("/api/tasks", headers=bearer(token)), token)
        # One fetch at most (the first unknown kid), and the app and its data are unharmed.
        assert env.server.fetches <= 1
        assert (await env.client.get("/api/tasks", headers=bearer(env.rsa.sign(new_user())))).status_code == 200


@pytest.mark.parametrize("kid", ["attacker", "legit"])
async def test_list_with_jku_x5u_jwk_headers_never_fetches_them(database_url: str, kid: str) -> None:
    attacker = KeyPair("RS256")
    with JWKSServer([attacker]) as evil:
        async with jwks_app(database_url) as env:
            headers: dict[str, Any] = {
                "jku": evil.url,
                "x5u": evil.url,
                "jwk": attacker.jwk,
                "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
            }
            if kid == "legit":
                headers["kid"] = env.rsa.kid
            token = attacker.sign(new_user(), headers=headers)
            assert_invalid_token(await env.client.get("/api/tasks", headers=bearer(token)), token)
            # The same headers on a genuine token are simply ignored.
            genuine = env.rsa.sign(new_user(), headers={"jku": evil.url, "x5u": evil.url, "jwk": attacker.jwk})
            assert (await env.client.get("/api/tasks", headers=bearer(genuine))).status_code == 200
        assert evil.fetches == 0


async def test_list_with_hs256_jku_header_never_fetches_it(client: httpx.AsyncClient) -> None:
    attacker = KeyPair("EdDSA")
    with JWKSServer([attacker]) as evil:
        bad = forge({"alg": "HS256", "jku": evil.url, "kid": attacker.kid}, claims(new_user()), OTHER_SECRET.encode())
        assert_invalid_token(await client.get("/api/tasks", headers=bearer(bad)), bad)
        good = jwt.encode(claims(new_user()), SECRET, algorithm="HS256", headers={"jku": evil.url})
        assert (await client.get("/api/tasks", headers=bearer(good))).status_code == 200
    assert evil.fetches == 0


async def test_list_with_malformed_alg_beside_jwks_is_401(database_url: str) -> None:
    async with jwks_app(database_url) as env:
        for alg in (["RS256"], {"name": "RS256"}, 256, None, "rs256", "RS256 ", "none"):
            token = forge({"alg": alg, "kid": env.rsa.kid}, claims(new_user()), SECRET.encode())
            assert_invalid_token(await env.client.get("/api/tasks", headers=bearer(token)), token)


async def test_list_with_hs384_configured_accepts_only_hs384(database_url: str) -> None:
    user = new_user()
    hs384 = jwt.encode(claims(user), SECRET, algorithm="HS384")
    hs256 = hs256_token(user)
    async with running_app(make_settings(database_url, JWT_ALGORITHM="HS384")) as app, http_client(app) as client:
        assert (await client.get("/api/tasks", headers=bearer(hs384))).status_code == 200
        assert_invalid_token(await client.get("/api/tasks", headers=bearer(hs256)), hs256)


@pytest.mark.slow
@pytest.mark.one_database  # the verified-token cache sits before any database work
async def test_verified_token_cache_still_expires_at_exp(database_url: str) -> None:
    # The second call is answered from the verified-token cache; it must still honour `exp`.
    async with running_app(make_settings(database_url, JWT_LEEWAY=0)) as app, http_client(app) as client:
        token = hs256_token(new_user(), exp_in=2)
        assert (await client.get("/api/tasks", headers=bearer(token))).status_code == 200
        assert (await client.get("/api/tasks", headers=bearer(token))).status_code == 200
        await asyncio.sleep(2.5)
        expired = await client.get("/api/tasks", headers=bearer(token))
        assert expired.status_code == 401
        assert "expired" in expired.json()["detail"]


@pytest.mark.parametrize("sub", ["bad\ud800id", "nul\x00id", " ", "x" * 256])
async def test_list_with_unstorable_subject_is_401(client: httpx.AsyncClient, sub: str) -> None:
    response = await client.get("/api/tasks", headers=bearer(hs256_token(sub)))
    assert_problem(response, 401)
