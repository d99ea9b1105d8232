"""The API contract (specs/001-backend-core-api/contracts/openapi.yaml).

It is exactly what the app generates (`make openapi`), valid OpenAPI 3.1, precise about every
response, and usable: TypeScript types generated from it with openapi-typescript type-check a
small client (tests/contract/ts/client.ts), which stops compiling when the contract breaks.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from app.openapi_export import CONTRACT_PATH, contract, render
from tests.support.npm import node_with_packages

TS_DIR = Path(__file__).resolve().parent / "contract" / "ts"

PROBLEM_JSON = "application/problem+json"
PROBLEM_SCHEMAS = ("ProblemDetail", "ValidationProblemDetail")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The committed contract."""
    loaded: dict[str, Any] = yaml.safe_load(CONTRACT_PATH.read_text(encoding="utf-8"))
    return loaded


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) for every operation of the contract."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


# --- the file is the app's -------------------------------------------------------------------


def test_export_matches_committed_contract() -> None:
    expected = render(contract())
    actual = CONTRACT_PATH.read_text(encoding="utf-8") if CONTRACT_PATH.exists() else ""
    diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), "committed", "app", n=2))
    assert actual == expected, f"the contract is stale: run `make openapi` and commit it\n{diff[:4000]}"


def test_export_is_deterministic() -> None:
    assert render(contract()) == render(contract())


def test_validate_contract_passes(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


# --- the contract is precise -----------------------------------------------------------------


def test_declare_operation_ids_for_every_route(document: dict[str, Any]) -> None:
    ids = {(method, path): operation["operationId"] for path, method, operation in operations(document)}
    assert ids == {
        ("get", "/health"): "getHealth",
        ("get", "/api/tasks"): "listTasks",
        ("post", "/api/tasks"): "createTask",
        ("get", "/api/tasks/{task_id}"): "getTask",
        ("put", "/api/tasks/{task_id}"): "replaceTask",
        ("patch", "/api/tasks/{task_id}"): "updateTask",
        ("delete", "/api/tasks/{task_id}"): "deleteTask",
        ("get", "/api/tasks/changes"): "listTaskChanges",
        ("get", "/api/tasks/events"): "streamTaskEvents",
    }


def test_declare_errors_as_problem_json(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "default" in responses, (method, path)
        for code, response in responses.items():
            headers = response["headers"]
            assert headers["X-Request-ID"] == {"$ref": "#/components/headers/X-Request-ID"}, (method, path, code)
            if code != "default" and int(code) < 400:
                continue
            assert list(response["content"]) == [PROBLEM_JSON], (method, path, code)
            problem, invalid = ({"$ref": f"#/components/schemas/{name}"} for name in PROBLEM_SCHEMAS)
            expected: dict[str, Any] = invalid if code == "422" else problem
            if code == "422" and operation["operationId"] in ("createTask", "listTasks", "listTaskChanges"):
                # ... or a reused Idempotency-Key / a search over the time limit / a bad cursor: no `errors`
                expected = {"anyOf": [invalid, problem]}
            assert response["content"][PROBLEM_JSON]["schema"] == expected, (method, path, code)
            if code == "401":
                assert "WWW-Authenticate" in headers
            if code in ("429", "503"):
                assert "Retry-After" in headers


def test_declare_error_codes_per_route(document: dict[str, Any]) -> None:
    codes = {(method, path): set(operation["responses"]) for path, method, operation in operations(document)}
    item, collection = "/api/tasks/{task_id}", "/api/tasks"
    assert codes[("get", "/health")] == {"200", "503", "default"}
    assert codes[("get", collection)] == {"200", "401", "422", "429", "503", "default"}
    assert codes[("post", collection)] == {"201", "400", "401", "413", "422", "429", "503", "default"}
    assert codes[("get", item)] == {"200", "401", "403", "404", "422", "429", "503", "default"}
    write = {"200", "400", "401", "403", "404", "412", "413", "422", "429", "503", "default"}
    assert codes[("put", item)] == write
    assert codes[("patch", item)] == write
    assert codes[("delete", item)] == {"204", "401", "403", "404", "412", "422", "429", "503", "default"}
    assert codes[("get", "/api/tasks/changes")] == {"200", "401", "410", "422", "429", "503", "default"}
    assert codes[("get", "/api/tasks/events")] == {"200", "401", "422", "429", "503", "default"}


def test_declare_success_bodies_and_headers(document: dict[str, Any]) -> None:
    paths = document["paths"]
    created = paths["/api/tasks"]["post"]["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskRead"}
    assert {"ETag", "Location"} <= set(created["headers"])
    for method in ("get", "put", "patch"):
        assert "ETag" in paths["/api/tasks/{task_id}"][method]["responses"]["200"]["headers"]
    assert "content" not in paths["/api/tasks/{task_id}"]["delete"]["responses"]["204"]
    changes = paths["/api/tasks/changes"]["get"]["responses"]["200"]
    assert changes["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskChanges"}
    # The live events are a stream, documented as such (not as JSON).
    events = paths["/api/tasks/events"]["get"]
    assert list(events["responses"]["200"]["content"]) == ["text/event-stream"]
    assert [p["name"] for p in events["parameters"]] == ["Last-Event-ID"]
    headers = document["components"]["headers"]
    assert headers["ETag"]["schema"]["pattern"] == '^"[0-9]+"$'
    assert headers["Retry-After"]["schema"]["type"] == "integer"


def test_declare_bearer_security_on_api_routes(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["BearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for path, method, operation in operations(document):
        expected: list[dict[str, list[str]]] | None = [{"BearerAuth": []}] if path.startswith("/api/") else None
        assert operation.get("security") == expected, (method, path)


def test_declare_schema_formats_limits_and_enums(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    read = schemas["TaskRead"]["properties"]
    assert read["id"]["format"] == "uuid"
    assert read["created_at"]["format"] == read["updated_at"]["format"] == "date-time"
    assert schemas["TaskStatus"]["enum"] == ["pending", "in_progress", "completed"]
    assert schemas["TaskPriority"]["enum"] == ["low", "medium", "high"]
    create = schemas["TaskCreate"]
    assert create["required"] == ["title"] and create["additionalProperties"] is False
    assert (create["properties"]["title"]["minLength"], create["properties"]["title"]["maxLength"]) == (1, 255)
    assert create["properties"]["description"]["anyOf"][0]["maxLength"] == 10_000
    assert create["properties"]["due_date"]["anyOf"][0]["format"] == "date-time"
    page = schemas["TaskPage"]["properties"]
    assert (page["limit"]["minimum"], page["limit"]["maximum"]) == (1, 100)
    params = {p["name"]: p["schema"] for p in document["paths"]["/api/tasks"]["get"]["parameters"]}
    assert (params["limit"]["minimum"], params["limit"]["maximum"], params["limit"]["default"]) == (1, 100, 50)
    assert params["q"]["maxLength"] == 200
    assert params["sort"]["$ref"] == "#/components/schemas/TaskSort"
    feed = {p["name"]: p["schema"] for p in document["paths"]["/api/tasks/changes"]["get"]["parameters"]}
    assert (feed["limit"]["minimum"], feed["limit"]["maximum"], feed["limit"]["default"]) == (1, 1000, 500)
    change = schemas["TaskChanges"]["properties"]["changes"]["items"]
    assert change["discriminator"]["propertyName"] == "op"
    assert set(schemas["TaskUpsert"]["required"]) == {"op", "task", "etag"}
    assert set(schemas["TaskDeletion"]["required"]) == {"op", "id", "deleted_at"}
    for name in ("TaskCreate", "TaskPatch", "TaskRead", "TaskPage", "TaskChanges", "ValidationProblemDetail"):
        assert schemas[name]["examples"], name


def test_declare_nullability_as_the_app_accepts_it(document: dict[str, Any]) -> None:
    patch = document["components"]["schemas"]["TaskPatch"]["properties"]
    # PATCH: title/status/priority may be left out but never null; description/due_date may be null.
    assert patch["title"]["type"] == "string"
    assert "$ref" in patch["status"] and "$ref" in patch["priority"]
    assert {"type": "null"} in patch["description"]["anyOf"] and {"type": "null"} in patch["due_date"]["anyOf"]
    # A query or header parameter is absent or a string, never JSON null.
    for path, method, operation in operations(document):
        for parameter in operation.get("parameters", []):
            assert "anyOf" not in parameter["schema"], (method, path, parameter["name"])
    problem = document["components"]["schemas"]["ValidationProblemDetail"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "errors"}


# --- a TypeScript client type-checks against it ----------------------------------------------


@dataclass(frozen=True)
class TypeScriptTools:
    """The pinned openapi-typescript and tsc of tests/contract/ts."""

    node: str

    def generate(self, contract_file: Path, output: Path) -> None:
        # --default-non-nullable=false: a request field with a default (status, priority) stays optional.
        cli = TS_DIR / "node_modules" / "openapi-typescript" / "bin" / "cli.js"
        args = [self.node, str(cli), str(contract_file), "-o", str(output), "--default-non-nullable=false"]
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)

    def typecheck(self, contract_file: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
        """Generate api.d.ts from `contract_file` next to a copy of the client, then run tsc on it."""
        for name in ("client.ts", "tsconfig.json"):
            shutil.copy(TS_DIR / name, workdir / name)
        self.generate(contract_file, workdir / "api.d.ts")
        tsc = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"
        args = [self.node, str(tsc), "-p", str(workdir / "tsconfig.json"), "--pretty", "false"]
        return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def typescript() -> TypeScriptTools:
    """The tools, installed when missing; without Node the tests skip, except in CI where they fail."""
    return TypeScriptTools(node_with_packages(TS_DIR, "the TypeScript contract check"))


@pytest.mark.slow
def test_typecheck_client_passes(typescript: TypeScriptTools, tmp_path: Path) -> None:
    result = typescript.typecheck(CONTRACT_PATH, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _rename_task_field(document: dict[str, Any]) -> None:
    task = document["components"]["schemas"]["TaskRead"]
    task["properties"]["due_at"] = task["properties"].pop("due_date")
    task["required"] = ["due_at" if name == "due_date" else name for name in task["required"]]


def _allow_null_patch_title(document: dict[str, Any]) -> None:
    title = document["components"]["schemas"]["TaskPatch"]["properties"]["title"]
    document["components"]["schemas"]["TaskPatch"]["properties"]["title"] = {"anyOf": [title, {"type": "null"}]}


def _drop_status_value(document: dict[str, Any]) -> None:
    document["components"]["schemas"]["TaskStatus"]["enum"].remove("in_progress")


def _remove_patch_route(document: dict[str, Any]) -> None:
    del document["paths"]["/api/tasks/{task_id}"]["patch"]


@pytest.mark.parametrize(
    ("mutate", "symptom"),
    [
        (_rename_task_field, "'due_date' does not exist"),
        (_allow_null_patch_title, "Unused '@ts-expect-error' directive"),
        (_drop_status_value, '"in_progress"'),
        (_remove_patch_route, "'requestBody' does not exist"),
    ],
    ids=["renamed_field", "nullable_patch_title", "removed_enum_value", "removed_route"],
)
@pytest.mark.slow
def test_typecheck_client_fails_on_breaking_change(
    typescript: TypeScriptTools, tmp_path: Path, mutate: Callable[[dict[str, Any]], None], symptom: str
) -> None:
    document = yaml.safe_load(CONTRACT_PATH.read_text(encoding="utf-8"))
    mutate(document)
    broken = tmp_path / "openapi.yaml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = typescript.typecheck(broken, tmp_path)
    assert result.returncode != 0, "tsc accepted the client against a broken contract"
    assert symptom in result.stdout, result.stdout
