"""Prometheus metrics (`GET /metrics` when METRICS_ENABLED=true): requests, latency, the database
pool, the token cache, JWKS fetches, rate limiting.

Several worker processes (WEB_CONCURRENCY > 1) give one view through prometheus_client's
multiprocess mode: each worker writes its values to files in `PROMETHEUS_MULTIPROC_DIR`, and
whichever worker answers a scrape sums every worker's files. `python -m app.serve` points that
variable at a directory and empties it before the workers start (files of an earlier run would be
summed in). prometheus_client chooses its mode when it is first imported, so it is imported here
only when metrics are built, never at module import.

A worker that died leaves its files: its counters keep counting in the totals (they never go
backwards), its gauges are dropped at the next scrape (uvicorn has no hook to do it when it dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from app.errors import problem_response

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.registry import CollectorRegistry

    from app.database import Database

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds between two samples of the database pool gauges (a scrape also takes one).
SAMPLE_INTERVAL_S = 1.0
# Label values are bounded: unknown methods and paths no route matched are folded into one value each.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
RATE_LIMIT_POLICIES = ("read", "write", "auth-failures")
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """While the block runs (the server), `PROMETHEUS_MULTIPROC_DIR` names an empty directory.

    The operator's directory if the variable is set (its `*.db` files are deleted), else a fresh
    temporary one, removed afterwards. Call it before any worker starts.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="taskapi-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if not configured:
            shutil.rmtree(path, ignore_errors=True)


class Metrics:
    """The app's metrics; one instance per app, handed to the parts that count something."""

    def __init__(self) -> None:
        import prometheus_client as prom  # here, not at import: see the module docstring

        self.multiprocess = MULTIPROC_ENV in os.environ
        # Per app rather than prometheus_client's global registry, so tests can build several apps.
        self.registry: CollectorRegistry = prom.CollectorRegistry()
        registry = self.registry
        self.requests: Counter = prom.Counter(
            "taskapi_http_requests_total",
            "HTTP requests answered, by method, route template and status (499: the client went away).",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency: Histogram = prom.Histogram(
            "taskapi_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by method and route template.",
            ["method", "route"],
            registry=registry,
        )

        def pool_gauge(name: str, documentation: str) -> Gauge:
            # Summed over the live worker processes (a dead worker's value is dropped).
            return prom.Gauge(name, documentation, registry=registry, multiprocess_mode="livesum")

        self.db_in_use = pool_gauge(
            "taskapi_db_pool_in_use", "Database connections held by requests, summed over the worker processes."
        )
        self.db_waiting = pool_gauge(
            "taskapi_db_pool_waiting", "Requests waiting for a database connection, summed over the worker processes."
        )
        self.db_capacity = pool_gauge(
            "taskapi_db_pool_capacity",
            "Database connections requests may hold (DB_POOL_SIZE + DB_MAX_OVERFLOW per worker process).",
        )
        self.token_cache_hits: Counter = prom.Counter(
            "taskapi_token_cache_hits_total",
            "Bearer tokens accepted from the verified-token cache, without a signature check.",
            registry=registry,
        )
        self.token_cache_misses: Counter = prom.Counter(
            "taskapi_token_cache_misses_total",
            "Bearer tokens not in the verified-token cache (verified, or rejected).",
            registry=registry,
        )
        self.jwks_fetches: Counter = prom.Counter(
            "taskapi_jwks_fetches_total", "Fetches of the JWKS (key set) attempted.", registry=registry
        )
        self.jwks_fetch_failures: Counter = prom.Counter(
            "taskapi_jwks_fetch_failures_total",
            "JWKS fetches that failed (unreachable, HTTP error, no usable key).",
            registry=registry,
        )
        self.rate_limited: Counter = prom.Counter(
            "taskapi_rate_limited_total",
            "Requests refused with 429 by a rate limit, by policy (read, write, auth-failures).",
            ["policy"],
            registry=registry,
        )
        self.ratelimit_storage_errors: Counter = prom.Counter(
            "taskapi_ratelimit_storage_errors_total",
            "Calls to the rate limit storage (Redis) that failed or took over 100 ms.",
            registry=registry,
        )
        self.ratelimit_unchecked: Counter = prom.Counter(
            "taskapi_ratelimit_unchecked_total",
            "Requests served without a rate limit check because the storage was unavailable (fail open).",
            registry=registry,
        )
        for policy in RATE_LIMIT_POLICIES:
            self.rate_limited.labels(policy)  # present (at 0) before the first 429
        # Label lookups take a lock and build a key: the children are kept per label tuple.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._database: Database | None = None

    def observe_request(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one answered request and its duration under its route template."""
        method = scope["method"] if scope["method"] in _METHODS else "other"
        route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, database: Database) -> None:
        """Sample `database`'s pool gauges from now on (see `sample_forever`)."""
        self._database = database
        self.db_capacity.set(database.capacity)
        self.sample()

    def sample(self) -> None:
        """Write this worker's current pool gauges."""
        if self._database is not None:
            self.db_in_use.set(self._database.in_use)
            self.db_waiting.set(self._database.waiting)

    async def sample_forever(self) -> None:
        """Sample the pool gauges every second, so a scrape answered by another worker sees this one's."""
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self.sample()

    def render(self) -> tuple[bytes, str]:
        """The exposition (text format) over every worker, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        self.sample()
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        path = os.environ[MULTIPROC_ENV]
        _forget_dead_workers(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


def _forget_dead_workers(path: str) -> None:
    # A replaced worker's gauges would be summed in forever: drop the live gauges of processes that
    # no longer exist (a reused pid is kept, which only delays this).
    from prometheus_client import multiprocess

    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, another user's


def install_metrics_route(app: FastAPI, metrics: Metrics, token: str | None) -> None:
    """Serve `GET /metrics`, behind `Authorization: Bearer <token>` when a token is given."""
    expected = f"Bearer {token}".encode() if token else None

    async def serve_metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, expected):
                return problem_response(
                    401,
                    "The metrics need the configured bearer token (METRICS_TOKEN).",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        # Reading every worker's files is blocking I/O: off the event loop.
        body, content_type = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=content_type)

    app.add_route("/metrics", serve_metrics, methods=["GET"], include_in_schema=False)
