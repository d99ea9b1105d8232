"""Property-based fuzzing of the app from its own OpenAPI document (schemathesis, in-process via
ASGI), and hostile inputs: every answer is documented, conforms to its schema, and is never a 5xx.

The fuzz runs each operation with schema-conforming (positive) and schema-violating (negative)
requests from a fresh user with a valid token, half of the time against a task that user owns so
the success paths are reached too. FUZZ_MAX_EXAMPLES (default 40) bounds the examples per operation
and mode (about 10 s for both databases; 300 take about a minute). Hypothesis prints the seed of a
failure; replay with `--hypothesis-seed=<seed>`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, CheckFunction, load_all_checks
from schemathesis.config._checks import PositiveDataAcceptanceConfig
from schemathesis.python import asgi
from schemathesis.specs.openapi.schemas import OpenApiSchema

from app.main import create_app
from tests.support import assert_problem, auth, new_user
from tests.support.apps import make_settings

FUZZ_MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))
REQUEST_TIMEOUT = 10.0
# Every check schemathesis has (what `--checks all` runs). A schema-valid request may still be
# refused for reasons the schema cannot know (no such task, someone else's, a stale ETag).
load_all_checks()
ALL_CHECKS: list[CheckFunction] = [check for check in CHECKS.get_all() if callable(check)]  # type: ignore[misc]
ACCEPTED_STATUSES = ["2XX", "401", "403", "404", "409", "412"]
# GET /health has nothing a negative case could violate (no parameters, no body).
FUZZ_CASES = [
    ("getHealth", GenerationMode.POSITIVE),
    *(
        (operation, mode)
        for operation in ("createTask", "listTasks", "getTask", "replaceTask", "updateTask", "deleteTask")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ),
]


@pytest.fixture(scope="module")
def fuzz_schema(database_url: str) -> Iterator[OpenApiSchema]:
    """The OpenAPI document of an app on the session's database, loaded by schemathesis.

    Schemathesis runs the app (and its lifespan) on its own event loop thread; the lifespan is shut
    down afterwards so the engine's connections are closed.
    """
    app = create_app(make_settings(database_url))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(expected_statuses=ACCEPTED_STATUSES)
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()


@pytest.mark.parametrize(("operation_id", "mode"), FUZZ_CASES, ids=[f"{o}-{m.value}" for o, m in FUZZ_CASES])
def test_fuzz_operation_conforms_to_its_schema(
    fuzz_schema: OpenApiSchema, operation_id: str, mode: GenerationMode
) -> None:
    operation = fuzz_schema.find_operation_by_id(operation_id)
    # Every operation also documents a problem+json `default` response, which makes schemathesis'
    # status_code_conformance accept any status: check against the explicitly listed ones too.
    listed = {
        int(code)
        for code in fuzz_schema.raw_schema["paths"][operation.path][operation.method]["responses"]
        if code.isdigit()
    }
    user = new_user()
    with asgi.get_client(fuzz_schema.app) as client:

        def own_task() -> str:
            created = client.post("/api/tasks", json={"title": "fuzz target"}, headers=auth(user), timeout=10)
            assert created.status_code == 201, created.text
            task_id: str = created.json()["id"]
            return task_id

        @settings(
            max_examples=FUZZ_MAX_EXAMPLES,
            deadline=None,
            database=None,  # nothing written to .hypothesis/; the seed of a failure is printed instead
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        )
        @given(case=operation.as_strategy(mode, headers=auth(user)), target_own_task=st.booleans())
        def check(case: schemathesis.Case[Any], target_own_task: bool) -> None:
            if target_own_task and case.path_parameters and "task_id" in case.path_parameters:
                case.path_parameters["task_id"] = own_task()
            if case.headers and "Idempotency-Key" in case.headers:
                # Hypothesis repeats small keys; the same key with another body is a 422 by design.
                case.headers["Idempotency-Key"] = uuid.uuid4().hex
            if mode is GenerationMode.POSITIVE and case.query and "cursor" in case.query:
                # A list cursor is opaque and bound to its user and query: one made up is a 422 by
                # design (tests/test_keyset.py), whatever the schema says of its characters.
                del case.query["cursor"]
            response = case.call(session=client, timeout=REQUEST_TIMEOUT)
            case.validate_response(
                response, checks=ALL_CHECKS, headers=auth(user), transport_kwargs={"session": client}
            )
            assert response.status_code in listed, f"undocumented {response.status_code}: {case.as_curl_command()}"

        check()


# --- hostile inputs --------------------------------------------------------------------------------

HOSTILE_TEXT = {
    "emoji": "🚀 ship it 👩‍👩‍👧‍👦 🇺🇦 ✅ 🏳️‍🌈",
    "sql": "'; DROP TABLE tasks; -- \" OR 1=1 /* */ UNION SELECT * FROM pg_user; %_\\ $1 ?",
    "html": "<script>alert('x')</script><img src=x onerror=alert(1)>&amp;&lt;",
    "bidi-and-zero-width": "\u202eevil\u202c\u200b\u200d\ufeff\u2028\u2029",
    "combining": "e\u0301 vs \u00e9, A\u030a vs \u00c5, \u1100\u1161",
    "controls": "tab\tnew\nline\rbell\x07 del\x7f esc\x1b[31m",
    "astral-and-cjk": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 漢字 かな 한국어 العربية",
    "json-and-escapes": '{"title": "x"} \\u0000 \\" null None NaN',
    "format-strings": "%s %d %n {0} ${HOME} $(id) `id` {{7*7}}",
    "like-wildcards": "100%_done\\%\\_",
}


def documented_statuses(app: FastAPI, method: str, path: str) -> set[int]:
    responses = app.openapi()["paths"][path][method]["responses"]
    return {int(code) for code in responses if code.isdigit()}


async def search(client: httpx.AsyncClient, user: str, q: str) -> list[str]:
    response = await client.get("/api/tasks", params={"q": q}, headers=auth(user))
    assert response.status_code == 200, response.text
    return [task["id"] for task in response.json()["items"]]


@pytest.mark.parametrize("name", list(HOSTILE_TEXT))
async def test_hostile_text_is_stored_and_returned_verbatim(client: httpx.AsyncClient, name: str) -> None:
    text = HOSTILE_TEXT[name]
    user = new_user()
    created = await client.post("/api/tasks", json={"title": text, "description": text}, headers=auth(user))
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["title"] == text.strip()  # titles are trimmed, nothing else is changed
    assert task["description"] == text

    got = await client.get(f"/api/tasks/{task['id']}", headers=auth(user))
    assert (got.json()["title"], got.json()["description"]) == (text.strip(), text)
    assert await search(client, user, text) == [task["id"]]  # the search matches it literally
    assert await search(client, user, text[3:12]) == [task["id"]]

    patched = await client.patch(f"/api/tasks/{task['id']}", json={"description": text[::-1]}, headers=auth(user))
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] == text[::-1]


async def test_hostile_longest_values_are_stored_verbatim(client: httpx.AsyncClient) -> None:
    user = new_user()
    title = "🚀" * 255  # limits count characters (code points), not bytes: 1020 bytes of UTF-8
    description = ("👩‍👩‍👧‍👦 <b>'%_\\" * 1000)[:10_000]
    created = await client.post("/api/tasks", json={"title": title, "description": description}, headers=auth(user))
    assert created.status_code == 201, created.text
    got = (await client.get(f"/api/tasks/{created.json()['id']}", headers=auth(user))).json()
    assert got["title"] == title and got["description"] == description
    assert await search(client, user, description[-200:]) == [created.json()["id"]]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"title": "🚀" * 256}, id="title-256-chars"),
        pytest.param({"title": "x", "description": "é" * 10_001}, id="description-10001-chars"),
        pytest.param({"title": "a\x00b"}, id="nul-in-title"),
        pytest.param({"title": "x", "description": "a\x00b"}, id="nul-in-description"),
        pytest.param({"title": " \t\n\u3000 "}, id="blank-title"),
    ],
)
async def test_hostile_create_is_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    user = new_user()
    assert_problem(await client.post("/api/tasks", json=body, headers=auth(user)), 422)
    assert (await client.get("/api/tasks", headers=auth(user))).json()["total"] == 0


@pytest.mark.parametrize("field", ["title", "description"])
async def test_hostile_lone_surrogate_is_422(client: httpx.AsyncClient, field: str) -> None:
    user = new_user()
    headers = {**auth(user), "Content-Type": "application/json"}
    # JSON escapes of unpaired surrogates: valid JSON syntax, but not storable Unicode.
    raw = {"title": '{"title": "x\\udfffy"}', "description": '{"title": "ok", "description": "x\\ud800y"}'}[field]
    assert_problem(await client.post("/api/tasks", content=raw.encode(), headers=headers), 422)
    created = await client.post("/api/tasks", json={"title": "target"}, headers=auth(user))
    url = f"/api/tasks/{created.json()['id']}"
    patch = f'{{"{field}": "\\udbff"}}'.encode()
    assert_problem(await client.patch(url, content=patch, headers=headers), 422)
    assert (await client.get(url, headers=auth(user))).json()["title"] == "target"


@pytest.mark.parametrize(
    ("raw_query", "accepted"),
    [
        ("q=a%00b", {422}),  # NUL
        ("q=%00", {422}),
        ("q=%ED%A0%80", {200, 422}),  # a UTF-8-encoded lone surrogate: decoded as U+FFFD or rejected
        ("q=%FF%FE", {200, 422}),  # not UTF-8 at all
        ("q=" + "x" * 201, {422}),
        ("q=", {422}),
        ("q=%25%5F%5C", {200}),  # %_\ literally
        ("q=%27%3B%20DROP%20TABLE%20tasks%3B--", {200}),
        ("q=%3Cscript%3E", {200}),
        ("q=%F0%9F%9A%80", {200}),
    ],
)
async def test_hostile_search_query_is_200_or_422(
    client: httpx.AsyncClient, raw_query: str, accepted: set[int]
) -> None:
    user = new_user()
    await client.post("/api/tasks", json={"title": "plain"}, headers=auth(user))
    response = await client.get(f"/api/tasks?{raw_query}", headers=auth(user))
    assert response.status_code in accepted, response.text
    if response.status_code == 200:
        assert response.json()["items"] == []  # none of these is a substring of "plain"
    else:
        assert_problem(response, 422)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"title": "\xff\xfe"}', id="not-utf8"),
        pytest.param(b'{"title": "a\x00b"}', id="raw-nul-in-json-string"),
        pytest.param(b'{"title": "x", "description": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="deep-nesting"),
        pytest.param(b'{"title": "x", "priority": 1e999999}', id="huge-number"),
        pytest.param(b'{"title": "x", "description": NaN}', id="nan"),
        pytest.param(b'{"title": "x"} trailing', id="trailing-garbage"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_hostile_raw_body_is_a_documented_4xx(app: FastAPI, client: httpx.AsyncClient, raw: bytes) -> None:
    headers = {**auth(new_user()), "Content-Type": "application/json"}
    response = await client.post("/api/tasks", content=raw, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code in documented_statuses(app, "post", "/api/tasks"), response.text
    assert_problem(response, response.status_code)


EXTREME_DATETIMES = [
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59-00:01",  # later than 9999-12-31T23:59:59Z: out of range in UTC
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00+00:01",  # earlier than 0001-01-01T00:00:00Z: out of range in UTC
    "2026-02-29T12:00:00Z",  # not a leap year
    "2026-06-30T23:59:60Z",  # leap second
    "2026-12-01T17:00:00.123456789Z",  # nanoseconds
]


@pytest.mark.parametrize("value", EXTREME_DATETIMES)
async def test_hostile_datetime_is_stored_or_422_never_500(client: httpx.AsyncClient, value: str) -> None:
    user = new_user()
    created = await client.post("/api/tasks", json={"title": "due", "due_date": value}, headers=auth(user))
    assert created.status_code in (201, 422), created.text
    if created.status_code == 422:
        assert_problem(created, 422)
    else:
        due = created.json()["due_date"]
        got = await client.get(f"/api/tasks/{created.json()['id']}", headers=auth(user))
        assert got.json()["due_date"] == due and due.endswith("Z")
    for bound in ("due_before", "due_after"):
        listed = await client.get("/api/tasks", params={bound: value}, headers=auth(user))
        assert listed.status_code in (200, 422), listed.text
