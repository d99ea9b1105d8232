"""Rate limits (app/ratelimit.py): per-user read and write budgets, failed authentications per
address, the 429 and its headers, Redis shared across processes, and failing open.

In-process tests use the in-memory storage on a SQLite database of their own (the limits do not
depend on the database); the server-process tests use Redis: the machine's, or one the test owns.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import ValidationError

from app.errors import RateLimited
from app.ratelimit import MemoryWindows, Policy, RateLimiter, client_address, count_operation
from tests.support import assert_401, assert_problem, auth, bearer, captured_logs, hs256_token, new_user
from tests.support.apps import make_settings, migrate, running_app
from tests.support.redis_servers import RedisServer, shared_redis
from tests.support.servers import APIServer, api_servers, free_port

RATE_LIMIT_FIELD = re.compile(r'^"(read|write|auth-failures)";r=0;t=(\d+)$')


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('ratelimit') / 'tasks.db'}"
    migrate(url)
    return url


@asynccontextmanager
async def limited_app(database_url: str, **overrides: Any) -> AsyncIterator[FastAPI]:
    settings = make_settings(database_url, RATE_LIMIT_ENABLED=True, **overrides)
    async with running_app(settings) as app:
        yield app


@asynccontextmanager
async def client_from(app: FastAPI, address: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """A client for `app` whose requests come from `address` (the ASGI client uvicorn would set)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def assert_limited(response: httpx.Response, policy: str, quota: int, window: int) -> int:
    """Assert a rate limit 429 with its headers and problem body; return its Retry-After."""
    body = assert_problem(response, 429)
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= window + 1
    assert response.headers["RateLimit-Policy"] == f'"{policy}";q={quota};w={window}'
    match = RATE_LIMIT_FIELD.match(response.headers["RateLimit"])
    assert match is not None, response.headers["RateLimit"]
    assert match.group(1) == policy
    assert int(match.group(2)) == retry_after
    assert f"retry after {retry_after} s" in body["detail"]
    return retry_after


async def test_ratelimit_next_request_is_429_and_retry_after_is_honest(sqlite_url: str) -> None:
    async with limited_app(sqlite_url, RATE_LIMIT_READ="2/second") as app, client_from(app) as client:
        headers = auth(new_user())
        for _ in range(2):
            ok = await client.get("/api/tasks", headers=headers)
            assert ok.status_code == 200
            assert ok.headers["RateLimit-Policy"] == '"read";q=2;w=1'
            assert "RateLimit" not in ok.headers
        refused = await client.get("/api/tasks", headers=headers)
        retry_after = assert_limited(refused, "read", 2, 1)
        assert "Too many reads" in refused.json()["detail"]
        # Still refused right away (remembered in the process: no storage call)...
        assert_limited(await client.get("/api/tasks", headers=headers), "read", 2, 1)
        # ... and served once Retry-After has passed.
        await asyncio.sleep(retry_after)
        assert (await client.get("/api/tasks", headers=headers)).status_code == 200


async def test_ratelimit_reads_and_writes_have_separate_budgets(sqlite_url: str) -> None:
    limits = {"RATE_LIMIT_READ": "2/minute", "RATE_LIMIT_WRITE": "3/minute"}
    async with limited_app(sqlite_url, **limits) as app, client_from(app) as client:
        headers = auth(new_user())
        for _ in range(2):
            assert (await client.get("/api/tasks", headers=headers)).status_code == 200
        assert_limited(await client.get("/api/tasks", headers=headers), "read", 2, 60)
        # Reads are used up; writes are not.
        created = []
        for index in range(3):
            response = await client.post("/api/tasks", json={"title": f"t{index}"}, headers=headers)
            assert response.status_code == 201
            assert response.headers["RateLimit-Policy"] == '"write";q=3;w=60'
            created.append(response.json()["id"])
        refused = await client.patch(f"/api/tasks/{created[0]}", json={"title": "x"}, headers=headers)
        assert_limited(refused, "write", 3, 60)
        assert "Too many writes" in refused.json()["detail"]
        # A refused write changed nothing.
        assert (await client.delete(f"/api/tasks/{created[0]}", headers=headers)).status_code == 429


async def test_ratelimit_two_users_do_not_share_a_budget(sqlite_url: str) -> None:
    async with limited_app(sqlite_url, RATE_LIMIT_READ="2/minute") as app, client_from(app) as client:
        alice, bob = auth(new_user()), auth(new_user())
        for _ in range(2):
            assert (await client.get("/api/tasks", headers=alice)).status_code == 200
        assert (await client.get("/api/tasks", headers=alice)).status_code == 429
        for _ in range(2):
            assert (await client.get("/api/tasks", headers=bob)).status_code == 200


async def test_ratelimit_user_is_the_token_subject_not_a_header(sqlite_url: str) -> None:
    async with limited_app(sqlite_url, RATE_LIMIT_READ="2/minute") as app, client_from(app) as client:
        user = new_user()
        for _ in range(2):
            assert (await client.get("/api/tasks", headers=auth(user))).status_code == 200
        # Another token of the same user, other client-chosen headers: same budget.
        spoofed = {**auth(user), "X-Forwarded-For": "198.51.100.9", "X-User-ID": new_user()}
        assert (await client.get("/api/tasks", headers=spoofed)).status_code == 429


async def test_ratelimit_bad_token_flood_is_limited_per_address(sqlite_url: str) -> None:
    settings = {"RATE_LIMIT_AUTH_FAILURES": "5/minute", "METRICS_ENABLED": True}
    async with limited_app(sqlite_url, **settings) as app:
        good_user = new_user()
        async with client_from(app, "203.0.113.7") as attacker, client_from(app, "198.51.100.20") as neighbour:
            known = auth(good_user)
            assert (await attacker.get("/api/tasks", headers=known)).status_code == 200  # verified, cached
            for index in range(5):
                bad = bearer(hs256_token(new_user(), secret="another-secret-of-enough-length-0123456789"))
                assert_401(await attacker.get("/api/tasks", headers=bad if index % 2 else bearer("x.y.z")))
            refused = await attacker.get("/api/tasks", headers=bearer("x.y.z"))
            assert_limited(refused, "auth-failures", 5, 60)
            assert "failed authentications" in refused.json()["detail"]
            # From now on: no signature check for this address, even for a valid new token...
            misses = _sample(await _scrape(attacker), "taskapi_token_cache_misses_total")
            for _ in range(20):
                assert (await attacker.get("/api/tasks", headers=auth(new_user()))).status_code == 429
            assert (await attacker.get("/api/tasks")).status_code == 429  # no token at all
            assert _sample(await _scrape(attacker), "taskapi_token_cache_misses_total") == misses
            # ... but a token it already proved stays usable, and other addresses are not affected.
            assert (await attacker.get("/api/tasks", headers=known)).status_code == 200
            assert (await neighbour.get("/api/tasks", headers=auth(new_user()))).status_code == 200
            assert_401(await neighbour.get("/api/tasks", headers=bearer("x.y.z")))
            metrics = await _scrape(attacker)
            assert _sample(metrics, 'taskapi_rate_limited_total{policy="auth-failures"}') == 22


async def test_ratelimit_disabled_means_no_limits_and_no_headers(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, RATE_LIMIT_READ="1/minute", RATE_LIMIT_AUTH_FAILURES="1/minute")
    assert settings.RATE_LIMIT_ENABLED is False  # the harness default; production's is true
    async with running_app(settings) as app, client_from(app) as client:
        headers = auth(new_user())
        for _ in range(3):
            response = await client.get("/api/tasks", headers=headers)
            assert response.status_code == 200
            assert "RateLimit-Policy" not in response.headers
        for _ in range(3):
            assert_401(await client.get("/api/tasks", headers=bearer("x.y.z")))
        await count_operation(app, new_user(), "write")  # a no-op


async def test_ratelimit_headers_are_exposed_to_browsers(sqlite_url: str) -> None:
    origin = "http://localhost:3000"
    async with limited_app(sqlite_url, RATE_LIMIT_READ="1/minute", CORS_ORIGINS=origin) as app, client_from(app) as c:
        headers = {**auth(new_user()), "Origin": origin}
        assert (await c.get("/api/tasks", headers=headers)).status_code == 200
        refused = await c.get("/api/tasks", headers=headers)
        assert refused.status_code == 429
        exposed = {name.strip().lower() for name in refused.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"ratelimit-policy", "ratelimit", "retry-after"} <= exposed
        assert refused.headers["Access-Control-Allow-Origin"] == origin


async def test_ratelimit_count_operation_shares_the_rest_budget(sqlite_url: str) -> None:
    async with limited_app(sqlite_url, RATE_LIMIT_WRITE="2/minute") as app, client_from(app) as client:
        user = new_user()
        await count_operation(app, user, "write")  # e.g. an MCP create_task call
        assert (await client.post("/api/tasks", json={"title": "rest"}, headers=auth(user))).status_code == 201
        with pytest.raises(RateLimited) as refused:
            await count_operation(app, user, "write")
        assert refused.value.status == 429
        assert refused.value.headers["RateLimit-Policy"] == '"write";q=2;w=60'
        assert refused.value.headers["RateLimit"].startswith('"write";r=0;t=')
        assert int(refused.value.headers["Retry-After"]) >= 1
        await count_operation(app, user, "read")  # the read budget is another one
        assert (await client.post("/api/tasks", json={"title": "x"}, headers=auth(user))).status_code == 429


async def test_ratelimit_unreachable_storage_fails_open(sqlite_url: str) -> None:
    # Nothing listens on this port: every storage call fails; requests are served all the same.
    storage = f"redis://127.0.0.1:{free_port()}/0"
    settings = {"RATE_LIMIT_STORAGE_URL": storage, "RATE_LIMIT_READ": "1/minute", "METRICS_ENABLED": True}
    with captured_logs() as lines:
        async with limited_app(sqlite_url, **settings) as app, client_from(app) as client:
            headers = auth(new_user())
            for _ in range(5):
                started = time.monotonic()
                response = await client.get("/api/tasks", headers=headers)
                assert response.status_code == 200
                assert time.monotonic() - started < 2
            for _ in range(3):
                assert_401(await client.get("/api/tasks", headers=bearer("x.y.z")))
            metrics = await _scrape(client)
    assert _sample(metrics, "taskapi_ratelimit_storage_errors_total") >= 1
    assert _sample(metrics, "taskapi_ratelimit_unchecked_total") == 8
    warnings = [line for line in lines if "rate limit storage unavailable" in line]
    assert len(warnings) == 1, warnings  # one a minute
    assert storage not in "\n".join(lines)


async def test_ratelimit_admitted_requests_whose_hits_redis_lost_count_as_unchecked(
    sqlite_url: str, redis_server: RedisServer
) -> None:
    # 100/minute: large enough for allowances, so the worker admits requests without waiting.
    settings = {"RATE_LIMIT_STORAGE_URL": redis_server.url, "RATE_LIMIT_READ": "100/minute", "METRICS_ENABLED": True}
    async with limited_app(sqlite_url, **settings) as app, client_from(app) as client:
        headers = auth(new_user())
        assert (await client.get("/api/tasks", headers=headers)).status_code == 200  # asks: allowance
        redis_server.stop()
        for _ in range(3):  # admitted (their hits then lost with Redis), or served unchecked after
            assert (await client.get("/api/tasks", headers=headers)).status_code == 200
        for _ in range(500):  # until the call carrying the admitted hits has failed
            metrics = await _scrape(client)
            if _sample(metrics, "taskapi_ratelimit_storage_errors_total") >= 1:
                break
            await asyncio.sleep(0.01)
        assert _sample(metrics, "taskapi_ratelimit_unchecked_total") == 3


def test_ratelimit_settings_are_validated() -> None:
    for name, value in [
        ("RATE_LIMIT_READ", "lots"),
        ("RATE_LIMIT_WRITE", "0/minute"),
        ("RATE_LIMIT_AUTH_FAILURES", "1/second;10/minute"),
        ("RATE_LIMIT_STORAGE_URL", "http://cache:6379"),
    ]:
        with pytest.raises(ValidationError) as error:
            make_settings("sqlite:///x.db", **{name: value})
        assert error.value.errors()[0]["loc"] == (name,)
    settings = make_settings("sqlite:///x.db", RATE_LIMIT_STORAGE_URL="rediss://:pw@cache:6380/2")
    assert settings.RATE_LIMIT_STORAGE_URL.get_secret_value().startswith("rediss://")


def test_ratelimit_memory_windows_count_exactly_as_limits_does() -> None:
    # The same hits, costs included, through `limits`' own in-memory moving window and ours.
    reference = MovingWindowRateLimiter(MemoryStorage())
    ours = MemoryWindows()
    policy = Policy.parse("write", "7/minute")
    rng = random.Random(13)  # noqa: S311 (a repeatable sequence of hits, not a secret)
    answers = []
    for _ in range(60):
        key, cost = rng.choice(("alice", "bob", "carol")), rng.choice((1, 1, 1, 2, 3, 8))
        fits = reference.hit(policy.item, policy.name, key, cost=cost)
        refused_until = ours.hit(policy, key, cost)
        assert fits == (refused_until is None), (key, cost)
        answers.append(fits)
    assert True in answers and False in answers


def test_ratelimit_memory_windows_refuse_until_the_blocking_entry_leaves_then_forget_idle_keys() -> None:
    windows = MemoryWindows()
    policy = Policy.parse("read", "3/second")
    first = time.time()
    assert windows.hit(policy, "alice", 2) is None
    time.sleep(0.2)
    second = time.time()
    assert windows.hit(policy, "alice", 1) is None
    # Full: one or two more fit when the first hit's entries leave the window ...
    for cost in (1, 2):
        refused_until = windows.hit(policy, "alice", cost)
        assert refused_until is not None and first <= refused_until - 1 <= second
    # ... three only when the newest one does.
    refused_until = windows.hit(policy, "alice", 3)
    assert refused_until is not None and second <= refused_until - 1 <= time.time()
    assert windows.hit(policy, "alice", 4) is not None  # more than the limit never fits
    time.sleep(1.1)
    assert windows.hit(policy, "alice", 3) is None
    # Windows idle for longer than their length are dropped every SWEEP_EVERY hits.
    for index in range(MemoryWindows.SWEEP_EVERY // 2):
        assert windows.hit(Policy.parse("write", "1/second"), f"user-{index}", 1) is None
    time.sleep(1.1)
    for _ in range(MemoryWindows.SWEEP_EVERY):  # one sweep in these, after the others went idle
        windows.hit(policy, "bob", 1)
    assert sum(len(keys) for _, keys in windows._windows.values()) == 1  # bob's


def test_ratelimit_client_address_groups_ipv6_by_64() -> None:
    assert client_address({"client": ("203.0.113.7", 1)}) == "203.0.113.7"
    assert client_address({"client": ("2001:db8:1:2:3:4:5:6", 1)}) == "2001:db8:1:2::/64"
    assert client_address({"client": ("2001:db8:1:2::9", 1)}) == "2001:db8:1:2::/64"
    assert client_address({"client": None}) == "unknown"


async def _scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def _sample(exposition: str, name: str) -> float:
    """The value of the sample `name` (with its labels, as exposed)."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not in the metrics")


# Real server processes: one budget in Redis across processes, and Redis failing under them.


def _get(client: httpx.Client, headers: dict[str, str]) -> int:
    return client.get("/api/tasks", headers=headers).status_code


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.mark.slow
def test_ratelimit_redis_is_one_budget_across_processes(sqlite_url: str, tmp_path: Path) -> None:
    settings = {
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_STORAGE_URL": shared_redis(),
        "RATE_LIMIT_READ": "4/minute",
        "RATE_LIMIT_WRITE": "40/minute",  # large enough for allowances (RedisWindows)
    }
    with (
        api_servers(sqlite_url, tmp_path, 2, settings=settings) as (first, second),
        httpx.Client(base_url=first.url) as a,
        httpx.Client(base_url=second.url) as b,
    ):
        headers = auth(new_user())
        # Four requests alternating between the two processes use the one budget up...
        assert [_get(a, headers), _get(b, headers), _get(a, headers), _get(b, headers)] == [200] * 4
        # ... so each process refuses the fifth, though each served only two.
        assert _get(a, headers) == 429
        assert _get(b, headers) == 429
        other = auth(new_user())
        assert _get(b, other) == 200
        # Writes alternating too, many of them admitted by a worker itself: no refusal before the
        # fortieth, and at most 4 more per process than the budget (the bound of allowances).
        writer = auth(new_user())
        statuses = [
            (a if index % 2 else b).post("/api/tasks", json={"title": "x"}, headers=writer).status_code
            for index in range(52)
        ]
        assert set(statuses) == {201, 429}
        assert statuses.index(429) >= 40 and statuses.count(201) <= 48, statuses
        assert statuses[-4:] == [429] * 4


@pytest.mark.slow
def test_ratelimit_redis_down_or_stalled_fails_open_then_limits_resume(
    sqlite_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = {
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_STORAGE_URL": redis_server.url,
        "RATE_LIMIT_READ": "3/second",
        "METRICS_ENABLED": "true",
    }
    with (
        APIServer(sqlite_url, tmp_path / "api.log", settings=settings) as api,
        httpx.Client(base_url=api.url, timeout=10) as client,
    ):
        headers = auth(new_user())
        statuses: list[int] = []

        def burst(count: int) -> list[int]:
            result = []
            for _ in range(count):
                started = time.monotonic()
                result.append(_get(client, headers))
                assert time.monotonic() - started < 2, "a request waited on the rate limit storage"
            statuses.extend(result)
            return result

        assert burst(4) == [200, 200, 200, 429]  # limits work
        time.sleep(1.1)
        redis_server.pause()  # stalled: connections hang, each call times out after 100 ms
        assert burst(8) == [200] * 8
        redis_server.resume()
        redis_server.stop()  # gone: connection refused
        time.sleep(1.1)
        assert burst(8) == [200] * 8
        redis_server.start()  # back (empty) on the same port: limits resume within about a second
        deadline = time.monotonic() + 10
        while 429 not in burst(4):
            assert time.monotonic() < deadline, "limits did not resume after Redis came back"
            time.sleep(0.3)
        assert not [status for status in statuses if status >= 500]
        metrics = client.get("/metrics").text
    assert _sample(metrics, "taskapi_ratelimit_storage_errors_total") >= 2
    assert _sample(metrics, "taskapi_ratelimit_unchecked_total") >= 16
    log = api.log()
    assert log.count("rate limit storage unavailable") == 1, api.log_tail()
    assert "rate limit storage available again" in log
    assert redis_server.url not in log


@pytest.mark.slow
def test_ratelimit_failed_authentications_count_the_forwarded_address(sqlite_url: str, tmp_path: Path) -> None:
    settings = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_AUTH_FAILURES": "2/minute"}
    bad = bearer("x.y.z")

    def from_(client: httpx.Client, address: str) -> int:
        return client.get("/api/tasks", headers={**bad, "X-Forwarded-For": f"{address}, 127.0.0.1"}).status_code

    # The test client is 127.0.0.1, the trusted proxy by default: each forwarded address has a budget.
    with (
        APIServer(sqlite_url, tmp_path / "behind-proxy.log", settings=settings) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        assert [from_(client, "203.0.113.1") for _ in range(3)] == [401, 401, 429]
        assert from_(client, "203.0.113.2") == 401
    # Not a trusted proxy: X-Forwarded-For is ignored, and every request is from 127.0.0.1.
    untrusted = {**settings, "FORWARDED_ALLOW_IPS": "192.0.2.1"}
    with (
        APIServer(sqlite_url, tmp_path / "direct.log", settings=untrusted) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        assert [from_(client, f"203.0.113.{index}") for index in range(3)] == [401, 401, 429]


async def test_ratelimit_redis_counts_a_batch_of_concurrent_hits_and_answers_refusals() -> None:
    # The machine's Redis (tests/support/redis_servers.py), fresh user ids.
    settings = make_settings(
        "sqlite:///unused.db", RATE_LIMIT_ENABLED=True, RATE_LIMIT_WRITE="5/hour", RATE_LIMIT_STORAGE_URL=shared_redis()
    )
    first, second = RateLimiter(settings), RateLimiter(settings)
    try:
        user = new_user()
        # Seven concurrent writes go to Redis in one round trip: five fit, two are refused.
        results = await asyncio.gather(*(first.charge(user, "write") for _ in range(7)), return_exceptions=True)
        assert results.count(None) == 5
        refused = [result for result in results if isinstance(result, RateLimited)]
        assert len(refused) == 2
        assert all(1 <= int(exc.headers["Retry-After"]) <= 3601 for exc in refused)
        # The other "process" (limiter) sees the same budget used up.
        with pytest.raises(RateLimited):
            await second.charge(user, "write")
        # A refused cost > 1 waits for the entry that blocks it, not the window's oldest one.
        other = new_user()
        await first.charge(other, "write", cost=3)
        oldest_at = time.time()
        await asyncio.sleep(2)
        newer_from = time.time()
        await first.charge(other, "write", cost=2)
        with pytest.raises(RateLimited) as blocked:
            await first.charge(other, "write", cost=4)
        refused_at = time.time()
        retry_after = int(blocked.value.headers["Retry-After"])
        assert retry_after >= newer_from + 3600 - refused_at  # honest: the second charge's entries
        assert retry_after > oldest_at + 3600 - refused_at + 1  # not the first's
    finally:
        await first.aclose()
        await second.aclose()
