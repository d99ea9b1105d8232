"""The OpenAPI document: the problem+json responses and headers routes declare, and the finishing
pass over what FastAPI generates. Nothing here changes runtime behaviour.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from starlette.routing import BaseRoute

from app.errors import PROBLEM_JSON, Problem
from app.middleware import REQUEST_ID_PATTERN  # documented exactly as the middleware checks it


class ValidationIssue(BaseModel):
    """One invalid input."""

    loc: list[str | int] = Field(
        description="Where: body/query/path/header, then the field.", examples=[["body", "title"]]
    )
    msg: str = Field(examples=["must not be blank"])
    type: str = Field(examples=["value_error"])


class ProblemDetail(BaseModel):
    """An RFC 9457 problem details object. Every member is always present (errors.problem_response)."""

    type: str = Field(
        description="Always `about:blank`: the status code is the problem type.", examples=["about:blank"]
    )
    title: str = Field(description="The HTTP reason phrase.", examples=["Not Found"])
    status: int = Field(ge=400, le=599, examples=[404])
    detail: str = Field(examples=["No task with this id."])


def _no_default(schema: JsonDict) -> None:
    schema.pop("default", None)


class ValidationProblemDetail(ProblemDetail):
    """The 422 problem: a ProblemDetail that lists every invalid input in `errors`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Unprocessable Entity",
                    "status": 422,
                    "detail": "The request is not valid; see `errors`.",
                    "errors": [{"loc": ["body", "title"], "msg": "must not be blank", "type": "value_error"}],
                }
            ]
        }
    )

    errors: list[ValidationIssue] = Field(min_length=1, max_length=20, description="At most 20 errors.")
    # Sent only when errors were left out, never as null (errors.MAX_LISTED_ERRORS).
    errors_omitted: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = Field(
        default=None,
        description="Present when there were more than 20 errors: how many are not listed.",
        examples=[3],
        json_schema_extra=_no_default,
    )


_DEFAULT_DESCRIPTION = "Any other error (e.g. 500 for an unexpected failure), also problem+json."

_OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The client's X-Request-ID when it looks like an id, else a fresh one; also in the access log.",
        "required": True,
        "schema": {
            "type": "string",
            "pattern": REQUEST_ID_PATTERN.pattern,
            "examples": ["5f0c6b1e9a2d4c7f8e3b2a1d0c9e8f7a"],
        },
    },
    "ETag": {
        "description": "Strong ETag of the task (its version); send it back as If-Match.",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9]+"$', "examples": ['"3"']},
    },
    "Location": {
        "description": "Path of the new task.",
        "required": True,
        "schema": {
            "type": "string",
            "format": "uri-reference",
            "examples": ["/api/tasks/0b5e9a4c-2f4e-4d7b-9a53-3c1f7f0a8e21"],
        },
    },
    "WWW-Authenticate": {
        "description": "The RFC 6750 bearer challenge; `error` is absent when no token was sent.",
        "required": True,
        "schema": {
            "type": "string",
            "examples": ['Bearer realm="tasks", error="invalid_token", error_description="The token has expired."'],
        },
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "examples": [2]},
    },
    # draft-ietf-httpapi-ratelimit-headers-11 (app/ratelimit.py); absent on a 429 for requests in
    # progress, which is no rate limit.
    "RateLimit-Policy": {
        "description": (
            "The rate limit the request counts against (IETF draft-ietf-httpapi-ratelimit-headers-11): "
            "`read` or `write` (per user), or `auth-failures` (per client address); `q` requests per "
            "`w` seconds. Every /api response carries it while rate limits are on."
        ),
        "required": False,
        "schema": {"type": "string", "examples": ['"read";q=1200;w=60']},
    },
    "RateLimit": {
        "description": "What is left of that limit: `r` requests, available again in `t` seconds.",
        "required": False,
        "schema": {"type": "string", "examples": ['"read";r=0;t=12']},
    },
}


def header_refs(*names: str) -> dict[str, dict[str, str]]:
    """`headers` of a response: references to the shared header definitions."""
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (ProblemDetail, ValidationProblemDetail):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _problem(description: str, schema: dict[str, Any], headers: tuple[str, ...] = ()) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}
    if headers:
        response["headers"] = header_refs(*headers)
    return response


def problem_responses(*problems: type[Problem]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the errors a route can raise, each described by its Problem class.

    Classes that share a status (a 422 for invalid input and one for a reused Idempotency-Key) are
    one response whose schema is either of theirs and whose description names each case.
    """
    by_status: dict[int, list[type[Problem]]] = {}
    for problem in problems:
        by_status.setdefault(problem.status, []).append(problem)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, classes in sorted(by_status.items()):
        schemas = list(dict.fromkeys(problem.schema for problem in classes))
        schema = _ref(schemas[0]) if len(schemas) == 1 else {"anyOf": [_ref(name) for name in schemas]}
        headers = tuple(dict.fromkeys(header for problem in classes for header in problem.documented_headers))
        descriptions = [problem.description for problem in classes]
        description = descriptions[0] if len(descriptions) == 1 else "".join(f"- {d}\n" for d in descriptions)
        responses[status] = _problem(description, schema, headers)
    return responses


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    # A query or header parameter is absent or a string: it can never be JSON null, so
    # `anyOf: [X, {type: null}]` (pydantic's `X | None`) would only mislead generated clients.
    variants = schema.get("anyOf")
    if not isinstance(variants, list):
        return schema
    kept = [variant for variant in variants if variant != {"type": "null"}]
    if len(kept) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**kept[0], **rest}


def refine_openapi(schema: dict[str, Any]) -> None:
    """OpenAPI-only additions FastAPI cannot express per route; runtime behaviour is untouched.

    Adds the problem+json schemas and shared headers, X-Request-ID on every response (the
    middleware sets it on all of them), a problem+json `default` response on every operation,
    and drops `null` from optional query/header parameters.
    """
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(_schemas())
    components["headers"] = copy.deepcopy(HEADERS)
    for path_item in schema.get("paths", {}).values():
        for operation in (path_item[method] for method in _OPERATIONS if method in path_item):
            responses = operation.setdefault("responses", {})
            responses.setdefault("default", _problem(_DEFAULT_DESCRIPTION, _ref("ProblemDetail")))
            for response in responses.values():
                # A new dict: the router's `headers` may be a module constant shared by routes.
                response["headers"] = {**response.get("headers", {}), **header_refs("X-Request-ID")}
            for parameter in operation.get("parameters", []):
                if parameter.get("in") in ("query", "header"):
                    parameter["schema"] = _without_null(parameter["schema"])


def install_openapi(app: FastAPI, documented: Sequence[BaseRoute] = ()) -> None:
    """Make `app.openapi()` return the generated document with the refinements above, built once.

    `documented` are routes to describe first, in this order, whatever order the app matches
    them in (app.main matches the hot ones first); the app's other routes follow.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            first = {id(route) for route in documented}
            routes = [*documented, *(route for route in app.routes if id(route) not in first)]
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
            refine_openapi(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
