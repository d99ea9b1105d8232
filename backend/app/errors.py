"""One error shape for every failure: RFC 9457 `application/problem+json`."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"
# Seconds a client should wait before retrying when the database is unreachable.
RETRY_AFTER_SECONDS = 2
# A 422 lists at most this many errors; `errors_omitted` counts the rest, so the answer stays small.
MAX_LISTED_ERRORS = 20

logger = logging.getLogger("app.errors")


class Problem(Exception):
    """A domain error that knows its HTTP status; the handler below renders it as problem+json."""

    status: int = 500
    title: str | None = None
    type: str = "about:blank"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class NotFound(Problem):
    """The resource does not exist."""

    status = 404


class Forbidden(Problem):
    """The resource exists but belongs to someone else."""

    status = 403


class PreconditionFailed(Problem):
    """`If-Match` did not match the current ETag."""

    status = 412


class Unauthorized(Problem):
    """The bearer token is missing or invalid (RFC 6750)."""

    status = 401

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="tasks"'
        if error is not None:
            # Only fixed, token-free text goes into the header.
            challenge += f', error="{error}", error_description="{detail}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class ServiceUnavailable(Problem):
    """A dependency (the database, the JWKS endpoint) cannot be reached right now."""

    status = 503

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, **extra)


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
    return problem_response(422, "The request is not valid; see `errors`.", errors=errors, **omitted)


async def _on_http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return problem_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


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
