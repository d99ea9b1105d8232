"""`GET /metrics` (app/metrics.py): off by default, behind METRICS_TOKEN when set, route templates as
labels, and one view over several worker processes (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from tests.support import JWKSServer, KeyPair, assert_problem, auth, new_user
from tests.support.apps import http_client, migrate, running_app
from tests.support.servers import APIServer

TOKEN = "metrics-token-0123456789abcdef"


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(exposition: str, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples(exposition).get((name, frozenset(labels.items())), 0.0)


async def test_metrics_absent_when_disabled(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/metrics"), 404)


async def test_metrics_need_the_token_when_one_is_set(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(METRICS_ENABLED=True, METRICS_TOKEN=TOKEN)
    async with running_app(settings) as app, http_client(app) as client:
        missing = await client.get("/metrics")
        assert_problem(missing, 401)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in missing.text
        assert_problem(await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}), 401)
        assert_problem(await client.get("/metrics", headers={"Authorization": TOKEN}), 401)
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert ok.headers["content-type"].startswith("text/plain; version=")
        assert ok.headers["cache-control"] == "no-store"
        assert "taskapi_http_requests_total" in ok.text


async def test_metrics_without_token_are_open(settings_factory: Callable[..., Settings]) -> None:
    async with running_app(settings_factory(METRICS_ENABLED=True)) as app, http_client(app) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert "/metrics" not in (await client.get("/openapi.json")).text


async def test_metrics_count_requests_under_route_templates(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(METRICS_ENABLED=True, DB_POOL_SIZE=7)
    async with running_app(settings) as app, http_client(app) as client:
        headers = auth(new_user())
        task_id = (await client.post("/api/tasks", json={"title": "counted"}, headers=headers)).json()["id"]
        for _ in range(3):
            assert (await client.get(f"/api/tasks/{task_id}", headers=headers)).status_code == 200
        missing = await client.get("/api/tasks/00000000-0000-4000-8000-000000000000", headers=headers)
        assert missing.status_code == 404
        assert (await client.get(f"/nope/{task_id}")).status_code == 404
        assert (await client.request("BREW", "/api/tasks")).status_code == 405
        assert (await client.get("/api/tasks", headers={"Authorization": "Bearer x.y.z"})).status_code == 401
        text = (await client.get("/metrics")).text

    def requests(method: str, route: str, status: str) -> float:
        return value(text, "taskapi_http_requests_total", method=method, route=route, status=status)

    assert requests("POST", "/api/tasks", "201") == 1
    assert requests("GET", "/api/tasks/{task_id}", "200") == 3
    assert requests("GET", "/api/tasks/{task_id}", "404") == 1
    assert requests("GET", "unmatched", "404") == 1
    assert requests("other", "/api/tasks", "405") == 1
    assert requests("GET", "/api/tasks", "401") == 1
    # Never the raw path: no label carries an id.
    assert task_id not in text
    assert not re.search(r'route="[^"]*[0-9a-f]{8}-[0-9a-f]{4}', text)
    assert value(text, "taskapi_http_request_duration_seconds_count", method="GET", route="/api/tasks/{task_id}") == 4
    # Token cache: the first request verified the token, the next four found it in the cache.
    assert value(text, "taskapi_token_cache_misses_total") == 2  # that token, and "x.y.z"
    assert value(text, "taskapi_token_cache_hits_total") == 4
    assert value(text, "taskapi_db_pool_capacity") == 7
    assert value(text, "taskapi_db_pool_in_use") == 0
    assert value(text, "taskapi_db_pool_waiting") == 0
    for policy in ("read", "write", "auth-failures"):
        assert value(text, "taskapi_rate_limited_total", policy=policy) == 0


async def test_metrics_count_jwks_fetches_and_failures(settings_factory: Callable[..., Settings]) -> None:
    key = KeyPair("EdDSA")
    with JWKSServer([key]) as jwks:
        settings = settings_factory(METRICS_ENABLED=True, JWT_JWKS_URL=jwks.url, JWT_JWKS_MIN_REFETCH_SECONDS=0)
        async with running_app(settings) as app, http_client(app) as client:
            headers = {"Authorization": f"Bearer {key.sign(new_user())}"}
            assert (await client.get("/api/tasks", headers=headers)).status_code == 200
            jwks.status = 500
            unknown = KeyPair("EdDSA")  # an unknown kid makes the client refetch, which fails
            response = await client.get("/api/tasks", headers={"Authorization": f"Bearer {unknown.sign(new_user())}"})
            assert response.status_code == 401
            text = (await client.get("/metrics")).text
    assert value(text, "taskapi_jwks_fetches_total") == 2
    assert value(text, "taskapi_jwks_fetch_failures_total") == 1


async def test_metrics_pool_gauges_follow_the_database(settings_factory: Callable[..., Settings]) -> None:
    async with running_app(settings_factory(METRICS_ENABLED=True, DB_POOL_SIZE=2)) as metered:
        database = metered.state.database
        async with database.reader(new_user()), database.reader(new_user()), http_client(metered) as client:
            text = (await client.get("/metrics")).text
    assert value(text, "taskapi_db_pool_in_use") == 2
    assert value(text, "taskapi_db_pool_capacity") == 2


# Several worker processes: the real server.


def _counts_per_worker(directory: Path, tmp_path: Path) -> dict[str, float]:
    """GET /api/tasks/{task_id} 200s counted by each worker, from its own counter file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        alone = tmp_path / f"one-{path.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        counts[path.stem] = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "taskapi_http_requests_total"
            and sample.labels == {"method": "GET", "route": "/api/tasks/{task_id}", "status": "200"}
        )
    return counts


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'tasks.db'}"
    migrate(url)
    return url


@pytest.mark.slow
def test_metrics_sum_over_two_workers(sqlite_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    stale = directory / "counter_999999.db"
    stale.write_bytes(b"left over from an earlier run")
    settings = {"METRICS_ENABLED": "true", "METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with APIServer(sqlite_url, tmp_path / "api.log", workers=2, settings=settings) as api:
        assert not stale.exists()  # emptied before the workers started
        headers = auth(new_user())
        task_id = httpx.post(f"{api.url}/api/tasks", json={"title": "x"}, headers=headers).json()["id"]

        def get(_: int) -> int:
            # A new connection each time, so both workers get some.
            return httpx.get(f"{api.url}/api/tasks/{task_id}", headers=headers).status_code

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                assert set(pool.map(get, range(20))) == {200}
                sent += 20
                per_worker = _counts_per_worker(directory, tmp_path)
                if len([count for count in per_worker.values() if count]) >= 2:
                    break
                time.sleep(0.2)
        # A request is counted once its response is sent (the access log's line), so the last few
        # may land a moment after the client has its answer.
        for _ in range(50):
            if sum(per_worker.values()) == sent:
                break
            time.sleep(0.1)
            per_worker = _counts_per_worker(directory, tmp_path)
        assert len([count for count in per_worker.values() if count]) == 2, per_worker
        assert sum(per_worker.values()) == sent
        token = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{api.url}/metrics").status_code == 401
        for _ in range(6):  # whichever worker answers, it sums every worker's counts
            scrape = httpx.get(f"{api.url}/metrics", headers=token)
            assert scrape.status_code == 200
            text = scrape.text
            counted = value(
                text, "taskapi_http_requests_total", method="GET", route="/api/tasks/{task_id}", status="200"
            )
            assert counted == sent
            assert value(text, "taskapi_http_requests_total", method="POST", route="/api/tasks", status="201") == 1
            assert value(text, "taskapi_db_pool_capacity") == 2 * 10  # the gauge of each live worker, summed
