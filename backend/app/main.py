"""The app factory: settings -> engine, token verifier, routers, middleware, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from pydantic import ValidationError
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from app.auth.jwks import JWKSClient
from app.auth.jwt import TokenVerifier
from app.config import Settings, config_error_line, get_settings
from app.database import Database, create_engine
from app.dburl import engine_spec
from app.docs import DOCS_PATHS, install_docs
from app.errors import install_error_handlers
from app.events import ChangeEvents, listen_url
from app.jsonguard import JSONShapeMiddleware
from app.logging import configure_logging
from app.mcp import MCP_PATH, METADATA_PATH, create_mcp_endpoint, protected_resource_metadata
from app.metrics import Metrics, install_metrics_route
from app.middleware import RequestContextMiddleware
from app.openapi import install_openapi
from app.ratelimit import RateLimiter
from app.routers import changes, health, tasks
from app.routers.hot import HotRoutes
from app.services import changes as change_log

logger = logging.getLogger("app")
# Allocations between two collections of the youngest generation (CPython's default: 700).
GC_THRESHOLD = 10_000

DESCRIPTION = """\
Each user's tasks, behind a JWT bearer token from Better Auth (JWKS) or signed with a shared
HS256 secret. Errors are RFC 9457 `application/problem+json`. Writes honour `If-Match` with the
strong `ETag` of a task.
"""


def load_settings() -> Settings:
    """The settings, or exit with one clear line when they are invalid."""
    try:
        return get_settings()
    except ValidationError as exc:
        print(config_error_line(exc), file=sys.stderr)
        raise SystemExit(2) from None


class TaskAPI(FastAPI):
    """FastAPI with a shorter per-request path; what it serves and documents is unchanged.

    FastAPI wraps the app in ServerErrorMiddleware and an exception-telemetry layer; here
    RequestContextMiddleware (outermost) is the last resort for errors already, so the stack is
    only our middleware, Starlette's ExceptionMiddleware (the exception handlers), the hot task
    routes (app/routers/hot.py) and FastAPI's AsyncExitStackMiddleware (which its request handler
    needs).
    """

    # The hot task routes served by app/routers/hot.py (False: every request through FastAPI's
    # routes, which tests/test_hot_routes.py compares it with).
    hot_routes = True

    def build_middleware_stack(self) -> ASGIApp:
        """The middleware around the router (FastAPI's own, minus the two layers above)."""
        handlers = {key: value for key, value in self.exception_handlers.items() if key not in (500, Exception)}
        app: ASGIApp = AsyncExitStackMiddleware(self.router)
        if self.hot_routes:
            app = HotRoutes(app, self.routes)
        app = ExceptionMiddleware(app, handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


def _mount_flat(app: FastAPI, routers: list[APIRouter]) -> list[BaseRoute]:
    """Add the routers' routes to the app itself; returns them in the order they are documented.

    `include_router` keeps each router as a nested matcher that every request walks (twice for
    the router that matches); their routes already carry the prefix, tags and responses, so
    added directly they are the same operations, matched by one flat scan. Requests are matched
    against the task collection first (the hot paths), then /api/tasks/changes and /events,
    which must stay ahead of /api/tasks/{task_id}, then the item routes, then the rest.
    """
    documented = [route for router in routers for route in router.routes]
    collection = [route for route in documented if getattr(route, "path", None) == "/api/tasks"]
    rest = [route for route in documented if route not in collection]
    app.router.routes[:0] = [*collection, *rest]
    return documented


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for `settings` (the environment's by default)."""
    settings = settings or load_settings()
    mcp = create_mcp_endpoint(settings)
    metrics = Metrics() if settings.METRICS_ENABLED else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database_url = settings.DATABASE_URL.get_secret_value()
        spec = engine_spec(database_url, connect_timeout=settings.DB_CONNECT_TIMEOUT)
        if spec.tls_warning is not None:
            logger.warning("DATABASE_URL: %s", spec.tls_warning)
        engine = create_engine(
            database_url,
            pool_size=settings.DB_POOL_SIZE,
            max_overflow=settings.DB_MAX_OVERFLOW,
            connect_timeout=settings.DB_CONNECT_TIMEOUT,
            statement_timeout_ms=settings.DB_STATEMENT_TIMEOUT_MS,
        )
        database = Database(
            engine,
            connections=settings.DB_POOL_SIZE + settings.DB_MAX_OVERFLOW,
            per_owner=settings.DB_MAX_SLOTS_PER_USER,
            local_timeout_ms=settings.DB_STATEMENT_TIMEOUT_MS if spec.behind_pooler else None,
            wait_timeout=settings.DB_CONNECT_TIMEOUT,
            ping_timeout=settings.DB_CONNECT_TIMEOUT + 1,
        )
        direct_url = settings.DATABASE_URL_DIRECT.get_secret_value() if settings.DATABASE_URL_DIRECT else None
        events = ChangeEvents(
            max_streams_per_owner=settings.SYNC_MAX_STREAMS_PER_USER,
            keepalive=settings.SYNC_KEEPALIVE_S,
            listen_url=listen_url(database_url, direct_url),
            read_heads=lambda owners: _read_heads(database, owners),
            connect_timeout=settings.DB_CONNECT_TIMEOUT,
        )
        if spec.behind_pooler and direct_url is None:
            logger.warning(
                "live events: DATABASE_URL is a pooler, which cannot LISTEN; other processes' writes reach "
                "event streams by polling every %.1f s. Set DATABASE_URL_DIRECT for LISTEN/NOTIFY.",
                events.poll_interval,
            )
        change_log.install(
            engine,
            change_log.SyncPolicy(
                retention=timedelta(days=settings.SYNC_TOMBSTONE_DAYS),
                ordered=settings.SYNC_ORDERED_COMMITS,
                announce=events.publish,
            ),
        )
        events.start()
        app.state.events = events
        jwks = None
        if settings.JWT_JWKS_URL:
            jwks = JWKSClient(
                settings.JWT_JWKS_URL, min_refetch_interval=settings.JWT_JWKS_MIN_REFETCH_SECONDS, metrics=metrics
            )
        app.state.database = database
        app.state.verifier = TokenVerifier(settings, jwks, metrics=metrics)
        logger.info("token verification: %s", app.state.verifier.describe())
        rate_limiter = RateLimiter(settings, metrics) if settings.RATE_LIMIT_ENABLED else None
        app.state.rate_limiter = rate_limiter
        logger.info("rate limits: %s", rate_limiter.describe() if rate_limiter else "off")
        # In the background: startup does not wait for a database that may be waking up.
        background = [asyncio.create_task(database.report_unavailable())]
        _settle_garbage_collector()
        if metrics is not None:
            metrics.watch(database)
            background.append(asyncio.create_task(metrics.sample_forever()))
        try:
            # MCP requests are served while this block runs (the SDK's own app and lifespan are not used).
            async with mcp.run():
                yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if rate_limiter is not None:
                await rate_limiter.aclose()
            await events.aclose()
            if jwks is not None:
                await jwks.aclose()
            await database.dispose()

    app = TaskAPI(
        title="Task API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # self-hosted below instead of FastAPI's CDN pages
        redoc_url=None,
        # FastAPI's built-in OpenTelemetry hooks: unused (app/metrics.py has the metrics), and
        # enabled they cost a provider lookup on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    # changes before tasks: /api/tasks/{task_id} would otherwise take /api/tasks/changes.
    documented = _mount_flat(app, [health.router, changes.router, tasks.router])
    # Exactly /mcp (no redirect to /mcp/), outside the OpenAPI document: tools/list describes the
    # tools (contracts/mcp-tools.json). POST only: a stateless server never sends anything on a GET
    # stream and has no session to DELETE, so those are 405 (the spec's "no SSE stream here").
    app.router.routes.append(Route(MCP_PATH, mcp.asgi, methods=["POST"], include_in_schema=False))
    app.add_api_route(METADATA_PATH, protected_resource_metadata(settings), methods=["GET"], include_in_schema=False)
    if settings.DOCS_ENABLED:
        install_docs(app)
    if metrics is not None:
        token = settings.METRICS_TOKEN.get_secret_value() if settings.METRICS_TOKEN else None
        install_metrics_route(app, metrics, token)
    # Innermost: a crowded JSON body is refused before FastAPI parses and validates it; inside CORS,
    # so a browser can read that 422 too.
    app.add_middleware(JSONShapeMiddleware)
    # Outermost, so the request id, the access log and cancellation on disconnect cover CORS answers
    # and errors too. CORS runs inside it, for requests with an Origin header.
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.MAX_BODY_BYTES,
        read_timeout=settings.HTTP_READ_TIMEOUT_S,
        cacheable_paths=DOCS_PATHS,
        metrics=metrics,
        cors={
            "allow_origins": settings.CORS_ORIGINS,
            "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
            "allow_headers": [
                "Authorization",
                "Content-Type",
                "If-Match",
                "Idempotency-Key",
                "X-Request-ID",
                "Last-Event-ID",
            ],
            "expose_headers": [
                "ETag",
                "Location",
                "Retry-After",
                "X-Request-ID",
                "Idempotent-Replayed",
                "RateLimit-Policy",
                "RateLimit",
            ],
            "max_age": 600,
        },
    )

    install_openapi(app, documented)
    return app


def _settle_garbage_collector() -> None:
    # Everything built so far (modules, the app, its routes and schemas) lives as long as the
    # process: frozen, the collector never walks it again. A short request allocates a few hundred
    # containers, so the youngest generation is collected far less often at a larger threshold.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


async def _read_heads(database: Database, owners: list[str]) -> dict[str, int]:
    # For live events without LISTEN (app/events.py): outside any user's slots, like /health.
    async with database.engine.connect() as connection:
        return await change_log.heads(connection, owners)


def _app_from_environment() -> FastAPI:
    settings = load_settings()
    configure_logging(settings.LOG_LEVEL)
    return create_app(settings)


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app on first access, so importing this module (tests,
    # tools) does not read the environment.
    if name == "app":
        application = _app_from_environment()
        globals()["app"] = application
        return application
    raise AttributeError(name)
