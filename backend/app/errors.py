"""One error shape for every failure: RFC 9457 `application/problem+json`."""

from __future__ import annotations

import inspect
import logging
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"
# Seconds a client should wait before retrying when the database is unreachable.
RETRY_AFTER_SECONDS = 2
# A 422 lists at most this many errors; `errors_omitted` counts the rest, so the answer stays small.
MAX_LISTED_ERRORS = 20

logger = logging.getLogger("app.errors")


class Problem(Exception):
    """A domain error that knows its HTTP status; the handler below renders it as problem+json.

    A subclass states its status (and any headers it always sends) in its class line, and its
    docstring is its `description`: what the OpenAPI document says of it (app/openapi.py) and
    the detail when the raise site gives none, so each text is written once.
    """

    status: ClassVar[int] = 500
    description: ClassVar[str] = "An unexpected error occurred."
    # Headers a response of this class always carries (documented in the contract).
    documented_headers: ClassVar[tuple[str, ...]] = ()
    # The problem schema of this class in the contract (ValidationProblemDetail lists `errors`).
    schema: ClassVar[str] = "ProblemDetail"
    title: str | None = None
    type: str = "about:blank"

    def __init_subclass__(
        cls, *, status: int | None = None, headers: tuple[str, ...] = (), schema: str | None = None
    ) -> None:
        super().__init_subclass__()
        cls.status = status or cls.status
        cls.description = inspect.cleandoc(cls.__doc__ or cls.description)
        cls.documented_headers = headers or cls.documented_headers
        cls.schema = schema or cls.schema

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        self.detail = detail or self.description
        super().__init__(self.detail)
        self.headers = headers or {}
        self.extra = extra


class MalformedRequest(Problem, status=400):
    """The body could not be decoded as JSON text (e.g. it is not valid UTF-8)."""


class Forbidden(Problem, status=403):
    """The task belongs to another user."""


class Unauthorized(Problem, status=401, headers=("WWW-Authenticate",)):
    """Missing, malformed, expired or otherwise invalid bearer token."""

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="tasks"'
        if error is not None:
            # Only fixed, token-free text goes into the header (RFC 6750 3).
            challenge += f', error="{error}", error_description="{detail}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class NotFound(Problem, status=404):
    """No task with this id."""


class PreconditionFailed(Problem, status=412):
    """The task has changed or was deleted since you read it (ETag mismatch); nothing was changed."""


class ServiceUnavailable(Problem, status=503, headers=("Retry-After",)):
    """The database (or the JWKS endpoint) is unreachable; retry after `Retry-After` seconds."""

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, **extra)


class ContentTooLarge(Problem, status=413):
    """The request body is larger than the server's limit (1 MiB by default)."""


class ValidationFailed(Problem, status=422, schema="ValidationProblemDetail"):
    """The request is not valid; `errors` lists each problem."""


class TooManyRequests(Problem, status=429, headers=("Retry-After", "RateLimit-Policy", "RateLimit")):
    """The caller is over a rate limit (`RateLimit-Policy` and `RateLimit` name it), or has too many
    requests in progress at once; retry after `Retry-After` seconds.
    """

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class RateLimited(TooManyRequests):
    """Over a rate limit: the caller's read or write budget, or the failed authentications of the
    client's address (app/ratelimit.py). Carries the RateLimit-Policy and RateLimit fields.
    """

    def __init__(self, detail: str, *, retry_after: int, policy: str, limit: str) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.headers.update({"RateLimit-Policy": policy, "RateLimit": limit})


class InvalidCursor(Problem, status=422):
    """The cursor is not one this API issued to you (garbled, truncated or another user's); leave it out to resync."""


class CursorExpired(Problem, status=410):
    """The cursor is older than the tombstone retention: discard your copy and resync from scratch (omit `since`)."""


class TooManyStreams(TooManyRequests):
    """You have as many event streams open as allowed (SYNC_MAX_STREAMS_PER_USER); close one first."""


class QueryTimeout(Problem, status=422):
    """The query took longer than the server allows (DB_STATEMENT_TIMEOUT_MS); narrow it (e.g. a longer `q`)."""


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Render one problem+json response."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or HTTPStatus(status).description,
    }
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _loc(loc: tuple[Any, ...]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


async def _on_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.detail, title=exc.title, type_=exc.type, headers=exc.headers, **exc.extra)


async def _on_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only location, message and type: pydantic's `input` could echo secrets or huge bodies back.
    found = exc.errors()
    errors = [
        {"loc": _loc(err["loc"]), "msg": err["msg"].removeprefix("Value error, "), "type": err["type"]}
        for err in found[:MAX_LISTED_ERRORS]
    ]
    omitted: dict[str, Any] = {"errors_omitted": len(found) - len(errors)} if len(found) > len(errors) else {}
    return problem_response(422, ValidationFailed.description, errors=errors, **omitted)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route that matched the path only; RFC
        # 9110 15.5.6 asks for every method the resource supports.
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(exc.status_code, str(exc.detail), headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts on the request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


# SQLSTATEs that say the server cannot serve us now: connection exceptions (08, e.g. PgBouncer's
# "SSL required"), authorization at connect time (28), too many connections, shutting down or
# starting up (57P01-57P03, e.g. crash recovery).
_UNAVAILABLE_SQLSTATES = ("08", "28", "53300", "57P01", "57P02", "57P03")


def is_database_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "cannot reach the database", as opposed to a bug in a query."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return True
    return isinstance(
        exc,
        sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError | OSError | TimeoutError,
    )


async def _on_database(_: Request, exc: Exception) -> Response:
    if is_database_unavailable(exc):
        # The class name only: driver messages can carry host names and connection details.
        logger.warning("database unavailable: %s", type(exc).__name__)
        return problem_response(
            503,
            "The database is unavailable; retry shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    # No traceback: SQLAlchemy's messages embed the SQL statement, which stays out of logs.
    cause = getattr(exc, "orig", None)
    logger.error("database error: %s (%s)", type(exc).__name__, type(cause).__name__)
    return problem_response(500, "An unexpected error occurred.")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error path of the app to problem+json (the middleware turns anything else into a 500)."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _on_database)
    app.add_exception_handler(OSError, _on_database)
    app.add_exception_handler(TimeoutError, _on_database)
