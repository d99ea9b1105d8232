"""Refuse a JSON body built to make validation expensive, before FastAPI validates it.

A model that forbids unknown fields reports each one: a 1 MiB body of ~95,000 unknown keys cost
~830 ms of validation and an 8.5 MB 422. No body of this API needs more than a handful of members
per object, so an object with more than `MAX_OBJECT_MEMBERS` is a 422 with a single error, decided
by one parse (the stdlib parser FastAPI itself uses, so both see the same document) and a walk that
stops at the first crowded object. Bodies with no more colons than that limit cannot hold such an
object and are not parsed here at all. Arrays and nesting need no rule of their own: a value of the
wrong type is one error however large it is, and nesting too deep for the parser is FastAPI's 400.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ValidationFailed, problem_response

# Members of one JSON object; a task has 5 fields, so this leaves room for any future shape.
MAX_OBJECT_MEMBERS = 64
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def crowded_object(body: bytes, limit: int = MAX_OBJECT_MEMBERS) -> int | None:
    """The member count of an object in `body` with more than `limit` members, else None."""
    if body.count(b":") <= limit:  # each member needs a colon
        return None
    try:
        document = orjson.loads(body)  # twice as fast as json on this
    except orjson.JSONDecodeError:
        # orjson is stricter (NaN, integers over 64 bits, lone surrogates): ask the parser FastAPI uses.
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return None  # not JSON FastAPI can read: it answers that itself
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if len(node) > limit:
                return len(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _json_body_expected(scope: Scope) -> bool:
    if scope["method"] not in _BODY_METHODS:
        return False
    content_type = b""
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
        elif name == b"content-length":
            has_body = value != b"0"
        elif name == b"transfer-encoding":
            has_body = True
    # What FastAPI may parse as JSON: application/json, application/*+json, or no content type.
    is_json = not content_type or (content_type.startswith(b"application/") and content_type.endswith(b"json"))
    return has_body and is_json


class JSONShapeMiddleware:
    """Reads a JSON request body once and answers 422 if it holds an object with too many members."""

    def __init__(self, app: ASGIApp, *, max_members: int = MAX_OBJECT_MEMBERS) -> None:
        self.app = app
        self.max_members = max_members

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _json_body_expected(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client is gone: nobody to answer
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except HTTPException as exc:  # the body limit or the read timeout (middleware.py)
            await problem_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))(
                scope, receive, send
            )
            return
        body = b"".join(chunks)
        members = crowded_object(body, self.max_members)
        if members is not None:
            error = {
                "loc": ["body"],
                "msg": f"has an object with {members} members; at most {self.max_members} are allowed",
                "type": "too_many_members",
            }
            response = problem_response(422, ValidationFailed.description, errors=[error])
            await response(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
