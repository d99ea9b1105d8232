"""OpenAPI descriptions of the problem+json error responses, shared by every router."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.errors import PROBLEM_JSON


class ValidationIssue(BaseModel):
    """One invalid input."""

    loc: list[str | int] = Field(description="Where: body/query/path/header, then the field.")
    msg: str
    type: str


class ProblemDetail(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(default="about:blank", examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(ge=400, le=599, examples=[404])
    detail: str = Field(examples=["No task with this id."])
    errors: list[ValidationIssue] | None = Field(default=None, description="On 422 only.")


_DESCRIPTIONS = {
    401: "Missing, malformed, expired or otherwise invalid bearer token.",
    403: "The task belongs to another user.",
    404: "No task with this id.",
    412: "If-Match did not match the task's current ETag; nothing was changed.",
    413: "The request body is larger than 1 MiB.",
    422: "The request is not valid; `errors` lists each problem.",
    503: "The database (or the JWKS endpoint) is unreachable; retry after `Retry-After` seconds.",
}


def openapi_components() -> dict[str, Any]:
    """JSON schemas that `problem_responses` refers to, for the OpenAPI components section."""
    schema = ProblemDetail.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {"ProblemDetail": schema, **definitions}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the given error codes, all problem+json."""
    return {
        code: {
            "description": _DESCRIPTIONS[code],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}},
        }
        for code in codes
    }
