"""Hand-written raw-ASGI reference for the task API's hot paths.

No framework: asyncpg pool + orjson + PyJWT, the same SQL the real app should
issue. It is the "how fast could this be in Python" yardstick the benchmark
divides our throughput by, so keep it minimal but not unrealistically lax:
it still authenticates, validates input and scopes every query by user.

Served by the same uvicorn command as the app (`baseline.asgi:app`, cwd bench/).
Env: DATABASE_URL, JWT_SECRET, BASELINE_POOL_SIZE (connections per worker).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import jwt
import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Task = dict[str, Any]

COLUMNS = "id, title, description, status, priority, due_date, user_id, created_at, updated_at"
STATUSES = frozenset({"pending", "in_progress", "completed"})
PRIORITIES = frozenset({"low", "medium", "high"})
WRITABLE = frozenset({"title", "description", "status", "priority", "due_date"})
MAX_LIMIT = 100
# Every write first takes the owner's next change number, as the app does (the row lock orders one
# owner's writers; pg_notify wakes the live event streams at commit): the same SQL, so the comparison
# stays about the framework.
STAMP_SQL = (
    "INSERT INTO change_counters (user_id, seq, purged_seq) VALUES ($1, 1, 0) "
    "ON CONFLICT (user_id) DO UPDATE SET seq = change_counters.seq + 1 "
    "RETURNING seq, pg_notify('task_changes', concat(seq, ' ', user_id))"
)
JSON_HEADERS = [(b"content-type", b"application/json")]


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _json_default(obj: object) -> str:
    # asyncpg returns its own UUID subclass, which orjson does not recognise.
    if isinstance(obj, uuid.UUID):
        return str(obj)
    raise TypeError(type(obj).__name__)


def dumps(payload: object) -> bytes:
    return orjson.dumps(payload, default=_json_default, option=orjson.OPT_UTC_Z)


def dsn_from_env() -> str:
    # Accept SQLAlchemy-style URLs too, so both servers can share one env var.
    return os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


def parse_task_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise HTTPError(404, "Task not found") from None


def parse_datetime(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPError(422, "due_date must be an RFC 3339 string or null")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPError(422, "due_date must be an RFC 3339 string or null") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def validate_fields(body: object, *, partial: bool) -> dict[str, Any]:
    """Check a create/patch body; returns the column values to write."""
    if not isinstance(body, dict):
        raise HTTPError(422, "body must be a JSON object")
    unknown = body.keys() - WRITABLE
    if unknown:
        raise HTTPError(422, f"unknown fields: {sorted(unknown)}")
    if not partial and "title" not in body:
        raise HTTPError(422, "title is required")
    values: dict[str, Any] = {}
    if "title" in body:
        title = body["title"]
        if not isinstance(title, str) or not 1 <= len(title) <= 255:
            raise HTTPError(422, "title must be a string of 1-255 characters")
        values["title"] = title
    if "description" in body:
        description = body["description"]
        if description is not None and not isinstance(description, str):
            raise HTTPError(422, "description must be a string or null")
        values["description"] = description
    if "status" in body:
        if body["status"] not in STATUSES:
            raise HTTPError(422, "invalid status")
        values["status"] = body["status"]
    if "priority" in body:
        if body["priority"] not in PRIORITIES:
            raise HTTPError(422, "invalid priority")
        values["priority"] = body["priority"]
    if "due_date" in body:
        values["due_date"] = parse_datetime(body["due_date"])
    return values


def query_int(params: dict[str, list[str]], name: str, default: int) -> int:
    raw = params.get(name)
    if not raw:
        return default
    try:
        return int(raw[0])
    except ValueError:
        raise HTTPError(422, f"{name} must be an integer") from None


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_json(receive: Receive) -> object:
    try:
        return orjson.loads(await read_body(receive))
    except orjson.JSONDecodeError:
        raise HTTPError(422, "body must be valid JSON") from None


class App:
    def __init__(self) -> None:
        self.pool: Any = None
        self.secret = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, body = await self.dispatch(scope, receive)
        except HTTPError as exc:
            status, body = exc.status, dumps({"detail": exc.detail})
        headers = JSON_HEADERS if body else []
        if status == 401:
            headers = [*headers, (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.secret = os.environ["JWT_SECRET"]
                size = int(os.environ.get("BASELINE_POOL_SIZE", "10"))
                # Fixed-size pool: no connect/disconnect churn under load.
                self.pool = await asyncpg.create_pool(dsn_from_env(), min_size=size, max_size=size)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def authenticate(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token:
                    break
        else:
            raise HTTPError(401, "Not authenticated")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"]},
            )
        except jwt.InvalidTokenError:
            raise HTTPError(401, "Invalid token") from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise HTTPError(401, "Invalid token")
        return sub

    async def dispatch(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/health" and method == "GET":
            await self.pool.fetchval("SELECT 1")  # like the app: DB reachable
            return 200, b'{"status":"ok","database":"ok"}'
        if path == "/api/tasks":
            user = self.authenticate(scope)
            if method == "GET":
                return 200, await self.list_tasks(user, scope["query_string"])
            if method == "POST":
                return 201, await self.create_task(user, await read_json(receive))
            raise HTTPError(405, "Method Not Allowed")
        if path.startswith("/api/tasks/") and path.count("/") == 3:
            user = self.authenticate(scope)
            task_id = parse_task_id(path[len("/api/tasks/") :])
            if method == "GET":
                return 200, await self.get_task(user, task_id)
            if method == "PATCH":
                body = await read_json(receive)
                return 200, await self.patch_task(user, task_id, body)
            if method == "DELETE":
                return 204, await self.delete_task(user, task_id)
            raise HTTPError(405, "Method Not Allowed")
        raise HTTPError(404, "Not Found")

    async def list_tasks(self, user: str, query_string: bytes) -> bytes:
        params = parse_qs(query_string.decode("latin-1"))
        limit = query_int(params, "limit", 20)
        offset = query_int(params, "offset", 0)
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            raise HTTPError(422, "invalid limit/offset")
        where, args = "user_id = $1", [user]
        status = params.get("status")
        if status:
            if status[0] not in STATUSES:
                raise HTTPError(422, "invalid status")
            where, args = "user_id = $1 AND status = $2", [user, status[0]]
        n = len(args)
        async with self.pool.acquire() as conn:
            total = await conn.fetchval(f"SELECT count(*) FROM tasks WHERE {where}", *args)
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM tasks WHERE {where} "
                f"ORDER BY created_at DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
                *args,
                limit,
                offset,
            )
        items = [dict(row) for row in rows]
        return dumps({"items": items, "total": total, "limit": limit, "offset": offset})

    async def get_task(self, user: str, task_id: str) -> bytes:
        row = await self.pool.fetchrow(f"SELECT {COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2", task_id, user)
        if row is None:
            raise HTTPError(404, "Task not found")
        return dumps(dict(row))

    async def create_task(self, user: str, body: object) -> bytes:
        values = validate_fields(body, partial=False)
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            seq = await conn.fetchval(STAMP_SQL, user)
            row = await conn.fetchrow(
                "INSERT INTO tasks (id, user_id, title, description, status, priority, "
                "due_date, created_at, updated_at, version, seq) "
                f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 1, $9) RETURNING {COLUMNS}",
                uuid.uuid4(),
                user,
                values["title"],
                values.get("description"),
                values.get("status", "pending"),
                values.get("priority", "medium"),
                values.get("due_date"),
                now,
                seq,
            )
        return dumps(dict(row))

    async def patch_task(self, user: str, task_id: str, body: object) -> bytes:
        values = validate_fields(body, partial=True)
        # Column names come from the WRITABLE allow-list, never from the client.
        sets = [f"{column} = ${i}" for i, column in enumerate(values, start=4)]
        sets += ["version = version + 1", "updated_at = now()", "seq = $3"]
        async with self.pool.acquire() as conn, conn.transaction():
            seq = await conn.fetchval(STAMP_SQL, user)
            row = await conn.fetchrow(
                f"UPDATE tasks SET {', '.join(sets)} WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}",
                task_id,
                user,
                seq,
                *values.values(),
            )
            if row is None:
                raise HTTPError(404, "Task not found")
        return dumps(dict(row))

    async def delete_task(self, user: str, task_id: str) -> bytes:
        async with self.pool.acquire() as conn, conn.transaction():
            seq = await conn.fetchval(STAMP_SQL, user)
            deleted = await conn.fetchval(
                "DELETE FROM tasks WHERE id = $1 AND user_id = $2 RETURNING id", task_id, user
            )
            if deleted is None:
                raise HTTPError(404, "Task not found")
            await conn.execute(
                "INSERT INTO task_tombstones (id, user_id, seq, deleted_at) VALUES ($1, $2, $3, now())",
                deleted,
                user,
                seq,
            )
        return b""


app = App()
