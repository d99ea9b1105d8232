"""Hand-written raw-ASGI reference for the task API's hot paths.

No framework: asyncpg pool + orjson + PyJWT. It is the "how fast could this be in Python" yardstick
the benchmark divides our throughput by, so it does exactly the app's work per request and no less:

- the same token checks as backend/app/auth/jwt.py (size limit, `crit` refused, `alg` allow-listed,
  PyJWT decode with the same algorithms, leeway and required claims, the same subject rules) and the
  same verified-token cache (4,096 tokens, oldest out first, kept until `exp`);
- the same statements, byte for byte as the app's SQLAlchemy compiles them for asyncpg, in the same
  transaction shape and round trips (bench/taskbench/sqlcheck.py records both servers on the wire
  and the bench stops if they differ: change these strings when the app's change);
- the same cap on connections per user (app/database.py: 4 at once, 429 after waiting 3 s), so a
  single-user profile (the 100,000-task user) runs on as many connections on both servers;
- the same JSON access-log line per request (app/logging.py's format, logger `app.access`) written to
  stderr like the app's, and the same response headers (X-Request-ID, nosniff, no-store, ETag).

Served by uvicorn (`baseline.asgi:app`, cwd bench/).
Env: DATABASE_URL, JWT_SECRET, JWT_LEEWAY (default 30 like the app), BASELINE_POOL_SIZE (connections
per worker), DB_STATEMENT_TIMEOUT_MS (default 5000 like the app).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import os
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
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

STATUSES = frozenset({"pending", "in_progress", "completed"})
PRIORITIES = frozenset({"low", "medium", "high"})
WRITABLE = frozenset({"title", "description", "status", "priority", "due_date"})
MAX_LIMIT = 100
DEFAULT_LIMIT = 50  # the app's TaskListQuery default
MAX_TOKEN_LENGTH = 8192  # app/auth/jwt.py
VERIFIED_CACHE_SIZE = 4096  # app/auth/jwt.py
USER_ID_MAX = 255

# --- the app's statements, as SQLAlchemy compiles them for asyncpg (app/services/tasks.py, changes.py)
_TASK = (
    "tasks.id, tasks.title, tasks.description, tasks.status, tasks.priority, tasks.due_date, "
    "tasks.user_id, tasks.created_at, tasks.updated_at"
)
_READ = f"{_TASK}, tasks.version"
# Page and total in one statement: the total is an uncorrelated scalar subquery summing the per-owner
# counters in task_counts (kept by triggers, migration 0005); a keyset page (`cursor`) starts after the
# cursor's (created_at, id) instead of at an offset. One row more than the page says whether there is
# a next page. Parameters: owner, [status], [after created_at, after id], limit + 1, [offset].
_COUNT = "SELECT CAST(coalesce(sum(task_counts.n), 0) AS BIGINT) AS coalesce_1 FROM task_counts"


def list_sql(*, status: bool, keyset: bool) -> str:
    """The app's page statement for the default sort (newest first)."""
    count_where, where, i = "task_counts.user_id = $1::VARCHAR", "tasks.user_id = $1::VARCHAR", 2
    if status:
        count_where += f" AND task_counts.status = ${i}::VARCHAR"
        where += f" AND tasks.status = ${i}::VARCHAR"
        i += 1
    if keyset:
        where += f" AND (tasks.created_at, tasks.id) < (${i}::TIMESTAMP WITH TIME ZONE, ${i + 1}::UUID)"
        i += 2
    sql = (
        f"SELECT {_TASK}, ({_COUNT} WHERE {count_where}) AS total FROM tasks WHERE {where} "
        f"ORDER BY tasks.created_at DESC, tasks.id DESC LIMIT ${i}"
    )
    return sql if keyset else f"{sql} OFFSET ${i + 1}"


def count_sql(*, status: bool) -> str:
    """The app's count by itself (a page past the last one has no row for the total to ride on)."""
    where = "task_counts.user_id = $1::VARCHAR" + (" AND task_counts.status = $2::VARCHAR" if status else "")
    return f"{_COUNT} WHERE {where}"


LIST_SQL = {
    (status, keyset): list_sql(status=status, keyset=keyset) for status in (False, True) for keyset in (False, True)
}
COUNT_SQL = {status: count_sql(status=status) for status in (False, True)}
GET_SQL = f"SELECT {_READ} FROM tasks WHERE tasks.id = $1::UUID AND tasks.user_id = $2::VARCHAR"
# Every write first takes the owner's next change number (the row lock orders one owner's writers;
# pg_notify wakes the live event streams at commit). Parameters: owner, 1, 0, purge due (None but
# for deletes), channel, " ", 1.
STAMP_SQL = (
    "INSERT INTO change_counters (user_id, seq, purged_seq, purge_due_at) VALUES ($1::VARCHAR, $2::BIGINT, "
    "$3::BIGINT, $4::TIMESTAMP WITH TIME ZONE) ON CONFLICT (user_id) DO UPDATE SET seq = (change_counters.seq "
    "+ $7::BIGINT), purge_due_at = coalesce(change_counters.purge_due_at, excluded.purge_due_at) RETURNING "
    "change_counters.seq, change_counters.purged_seq, change_counters.purge_due_at, pg_notify($5::VARCHAR, "
    "concat(change_counters.seq, $6::VARCHAR, change_counters.user_id)) AS n"
)
# The column types SQLAlchemy casts each written field to.
FIELD_TYPES = {
    "title": "VARCHAR",
    "description": "VARCHAR",
    "status": "VARCHAR",
    "priority": "VARCHAR",
    "due_date": "TIMESTAMP WITH TIME ZONE",
}
BEGIN = "read_committed"  # asyncpg sends BEGIN ISOLATION LEVEL READ COMMITTED, as the app's engine does


# One round trip per single-statement write (onetrip): the stamp is a data-modifying CTE of the write
# itself, sent on an autocommit connection (no BEGIN/COMMIT). SQLAlchemy numbers the CTE's parameters
# after the outer statement's, hence the order below.
def _stamp_cte(owner: int, due: int, channel: int, one: int, *, task_id: int | None = None) -> str:
    guard = (
        f" WHERE EXISTS (SELECT * FROM tasks AS target WHERE target.id = ${task_id}::UUID "
        f"AND target.user_id = ${owner}::VARCHAR)"
        if task_id is not None
        else ""
    )
    return (
        "WITH stamp AS (INSERT INTO change_counters (user_id, seq, purged_seq, purge_due_at) "
        f"SELECT ${owner}::VARCHAR AS anon_1, 1, 0, ${due}::TIMESTAMP WITH TIME ZONE AS anon_2{guard} "
        f"ON CONFLICT (user_id) DO UPDATE SET seq = (change_counters.seq + ${one}::BIGINT), "
        "purge_due_at = coalesce(change_counters.purge_due_at, excluded.purge_due_at) "
        "RETURNING change_counters.seq, change_counters.purge_due_at, "
        f"pg_notify(${channel}::VARCHAR, concat(change_counters.seq, ${channel + 1}::VARCHAR, "
        "change_counters.user_id)) AS n) "
    )


_STAMPED = f"{_READ}, tasks.seq, (SELECT stamp.purge_due_at FROM stamp) AS purge_due_at"
# Parameters: id, owner, title, description, status, priority, due_date, created_at, updated_at, 1,
# channel, " ", owner, purge due (None), 1.
CREATE_SQL = (
    _stamp_cte(13, 14, 11, 15) + "INSERT INTO tasks (id, user_id, title, description, status, priority, due_date, "
    "created_at, updated_at, version, seq) VALUES ($1::UUID, $2::VARCHAR, $3::VARCHAR, $4::VARCHAR, $5::VARCHAR, "
    "$6::VARCHAR, $7::TIMESTAMP WITH TIME ZONE, $8::TIMESTAMP WITH TIME ZONE, $9::TIMESTAMP WITH TIME ZONE, "
    f"$10::INTEGER, (SELECT stamp.seq FROM stamp)) RETURNING {_STAMPED}"
)


def patch_sql(fields: tuple[str, ...]) -> str:
    """The app's one-statement UPDATE for these (sorted) fields. Parameters: each field, now, 1,
    channel, " ", owner, purge due (None), task id, 1."""
    sets = [f"{name}=${i}::{FIELD_TYPES[name]}" for i, name in enumerate(fields, start=1)]
    n = len(fields)
    sets += [
        f"updated_at=${n + 1}::TIMESTAMP WITH TIME ZONE",
        f"version=(tasks.version + ${n + 2}::INTEGER)",
        "seq=(SELECT stamp.seq FROM stamp)",
    ]
    owner, task_id = n + 5, n + 7
    return (
        _stamp_cte(owner, n + 6, n + 3, n + 8, task_id=task_id) + f"UPDATE tasks SET {', '.join(sets)} "
        f"WHERE (SELECT stamp.seq FROM stamp) IS NOT NULL AND tasks.id = ${task_id}::UUID "
        f"AND tasks.user_id = ${owner}::VARCHAR RETURNING {_STAMPED}"
    )


DELETE_SQL = "DELETE FROM tasks WHERE tasks.id = $1::UUID AND tasks.user_id = $2::VARCHAR RETURNING tasks.id"
TOMBSTONE_SQL = (
    "INSERT INTO task_tombstones (id, user_id, seq, deleted_at) VALUES ($1::UUID, $2::VARCHAR, $3::BIGINT, "
    "$4::TIMESTAMP WITH TIME ZONE)"
)

JSON_TYPE = (b"content-type", b"application/json")
NOSNIFF = (b"x-content-type-options", b"nosniff")
NO_STORE = (b"cache-control", b"no-store")

# --- the access log: app/logging.py's JSON line, one per request, to stderr -----------------------
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JSONFormatter(logging.Formatter):
    """app/logging.py's formatter: one JSON object per line with the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        return orjson.dumps(line, default=str).decode()


def configure_logging() -> None:
    """Root logger to stderr as JSON lines, at INFO (the app's default LOG_LEVEL)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


access_log = logging.getLogger("app.access")


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def dumps(payload: object) -> bytes:
    # As the app renders tasks: asyncpg's UUID class goes through `str`.
    return orjson.dumps(payload, default=str, option=orjson.OPT_UTC_Z)


def dsn_from_env() -> str:
    # Accept SQLAlchemy-style URLs too, so both servers can share one env var.
    return os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


def parse_task_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise HTTPError(422, "task_id must be a UUID") from None


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


async def _keep_session(_: object) -> None:
    """Pool `reset`: nothing. asyncpg's default runs a reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL) on every release, a round trip the app's SQLAlchemy pool never makes."""


async def _set_statement_timeout(conn: Any, *, timeout_ms: int) -> None:
    # As the app's engine does once per connection.
    await conn.execute(f"SET statement_timeout = {timeout_ms}")


class TokenVerifier:
    """app/auth/jwt.py's TokenVerifier for the shared-secret case (no JWKS in the bench)."""

    def __init__(self, secret: str, algorithm: str, leeway: int) -> None:
        self._secret = secret.encode()
        self._algorithm = algorithm
        self._leeway = leeway
        self._verified: dict[str, tuple[str, float]] = {}

    def user_id(self, token: str) -> str:
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached[1]:
                return cached[0]
            self._verified.pop(token, None)
        if len(token) > MAX_TOKEN_LENGTH:
            raise HTTPError(401, "The token is too large.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise HTTPError(401, "The token is malformed.") from None
        if "crit" in header:
            raise HTTPError(401, "The token uses unsupported critical header parameters.")
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm != self._algorithm:
            raise HTTPError(401, "The token's signing algorithm is not accepted.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[algorithm],
                audience=None,
                issuer=None,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": False},
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise HTTPError(401, "The token is not valid.") from None
        user_id = _subject(claims)
        exp = claims["exp"]
        if isinstance(exp, int | float) and exp > time.time():
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (user_id, float(exp))
        return user_id


def _subject(claims: dict[str, Any]) -> str:
    for name in ("sub", "user_id"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str) and value.strip() and len(value) <= USER_ID_MAX and _storable(value):
            return value
        raise HTTPError(401, "The token's subject is not usable.")
    raise HTTPError(401, "The token has no subject.")


def _storable(value: str) -> bool:
    # app/columns.py unstorable_reason: no NUL, valid UTF-8.
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- page cursors: app/services/tasks.py's format (app/cursors.py's sealing), newest-first sort only --
_PAGE_CURSOR_VERSION = 1
_PAGE_CURSOR_PERSON = b"taskapi-page"
_CHECK_BYTES = 6
_HEAD = struct.Struct(">B16s")
_MICROS = struct.Struct(">q")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PAGE_CURSOR_MAX_LENGTH = 2048


def page_context(user: str, status: str | None) -> bytes:
    # Owner, sort, status, priority, due_before, due_after, q: what a cursor is bound to.
    return orjson.dumps([user, "-created_at", status, None, None, None, None], option=orjson.OPT_UTC_Z)


def _check(payload: bytes, context: bytes) -> bytes:
    return hashlib.blake2b(payload + context, digest_size=_CHECK_BYTES, person=_PAGE_CURSOR_PERSON).digest()


def encode_page_cursor(last: Task, context: bytes) -> str:
    key = _MICROS.pack((last["created_at"] - _EPOCH) // timedelta(microseconds=1))
    payload = _HEAD.pack(_PAGE_CURSOR_VERSION, last["id"].bytes) + key
    return base64.urlsafe_b64encode(payload + _check(payload, context)).decode().rstrip("=")


def decode_page_cursor(text: str, context: bytes) -> list[Any]:
    """[created_at, id] of the row the cursor follows; 422 if it is not one issued for this context."""
    try:
        if len(text) > PAGE_CURSOR_MAX_LENGTH:
            raise ValueError
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise HTTPError(422, "invalid cursor") from None
    payload, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
    if len(payload) != _HEAD.size + _MICROS.size or check != _check(payload, context) or payload[0] != 1:
        raise HTTPError(422, "invalid cursor")
    after_id = uuid.UUID(bytes=payload[1 : _HEAD.size])
    return [_EPOCH + timedelta(microseconds=_MICROS.unpack(payload[_HEAD.size :])[0]), after_id]


class OwnerSlots:
    """app/database.py's fairness: one owner holds at most `per_owner` connections at once; a request
    that waits longer than `wait_timeout` for one of them is a 429 (the app's DB_MAX_SLOTS_PER_USER
    and DB_CONNECT_TIMEOUT). A single-user profile is thereby capped alike on both servers."""

    def __init__(self, pool: Any, per_owner: int, wait_timeout: float) -> None:
        self._pool = pool
        self._per_owner = per_owner
        self._wait_timeout = wait_timeout
        self._owners: dict[str, list[Any]] = {}  # owner -> [semaphore, users]

    @contextlib.asynccontextmanager
    async def connection(self, owner: str) -> AsyncIterator[Any]:
        """A pooled connection for one of `owner`'s requests."""
        entry = self._owners.get(owner)
        if entry is None:
            entry = self._owners[owner] = [asyncio.Semaphore(self._per_owner), 0]
        entry[1] += 1
        semaphore: asyncio.Semaphore = entry[0]
        try:
            try:
                if semaphore.locked():
                    async with asyncio.timeout(self._wait_timeout):
                        await semaphore.acquire()
                else:
                    await semaphore.acquire()
            except TimeoutError:
                raise HTTPError(429, "Too many of your requests are in progress at once.") from None
            try:
                async with self._pool.acquire() as conn:
                    yield conn
            finally:
                semaphore.release()
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._owners[owner]


class App:
    def __init__(self) -> None:
        self.pool: Any = None
        self.slots: OwnerSlots | None = None
        self.verifier: TokenVerifier | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        headers: list[tuple[bytes, bytes]] = []
        try:
            status, body, headers = await self.dispatch(scope, receive)
        except HTTPError as exc:
            status, body = exc.status, dumps({"detail": exc.detail})
            if status == 401:
                headers = [(b"www-authenticate", b"Bearer")]
        if body:
            headers.append(JSON_TYPE)
        headers += [(b"x-request-id", request_id.encode()), NOSNIFF, NO_STORE]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        # Path only, as the app logs it.
        access_log.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "request_id": request_id,
            },
        )

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                configure_logging()
                self.verifier = TokenVerifier(
                    os.environ["JWT_SECRET"],
                    os.environ.get("JWT_ALGORITHM") or "HS256",
                    int(os.environ.get("JWT_LEEWAY") or 30),
                )
                size = int(os.environ.get("BASELINE_POOL_SIZE", "10"))
                timeout_ms = int(os.environ.get("DB_STATEMENT_TIMEOUT_MS") or 5000)
                init = functools.partial(_set_statement_timeout, timeout_ms=timeout_ms)
                # Fixed-size pool: no connect/disconnect churn under load.
                self.pool = await asyncpg.create_pool(
                    dsn_from_env(), min_size=size, max_size=size, init=init, reset=_keep_session
                )
                self.slots = OwnerSlots(
                    self.pool,
                    int(os.environ.get("DB_MAX_SLOTS_PER_USER") or 4),
                    float(os.environ.get("DB_CONNECT_TIMEOUT") or 3.0),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def connection(self, user: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection within `user`'s share (OwnerSlots)."""
        assert self.slots is not None
        return self.slots.connection(user)

    def authenticate(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                token = token.strip()
                if scheme.lower() == "bearer" and token:
                    break
        else:
            raise HTTPError(401, "A bearer token is required.")
        assert self.verifier is not None
        return self.verifier.user_id(token)

    async def dispatch(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/health" and method == "GET":
            await self.pool.fetchval("SELECT 1")  # like the app: DB reachable
            return 200, b'{"status":"ok","database":"ok"}', []
        if path == "/api/tasks":
            user = self.authenticate(scope)
            if method == "GET":
                return 200, await self.list_tasks(user, scope["query_string"]), []
            if method == "POST":
                task, version = await self.create_task(user, await read_json(receive))
                location = f"/api/tasks/{task['id']}".encode()
                return 201, dumps(task), [(b"etag", version), (b"location", location)]
            raise HTTPError(405, "Method Not Allowed")
        if path.startswith("/api/tasks/") and path.count("/") == 3:
            user = self.authenticate(scope)
            task_id = parse_task_id(path[len("/api/tasks/") :])
            if method == "GET":
                task, version = await self.get_task(user, task_id)
                return 200, dumps(task), [(b"etag", version)]
            if method == "PATCH":
                body = await read_json(receive)
                task, version = await self.patch_task(user, task_id, body)
                return 200, dumps(task), [(b"etag", version)]
            if method == "DELETE":
                await self.delete_task(user, task_id)
                return 204, b"", []
            raise HTTPError(405, "Method Not Allowed")
        raise HTTPError(404, "Not Found")

    async def list_tasks(self, user: str, query_string: bytes) -> bytes:
        params = parse_qs(query_string.decode("latin-1"))
        limit = query_int(params, "limit", DEFAULT_LIMIT)
        offset = query_int(params, "offset", 0)
        if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= 1_000_000:
            raise HTTPError(422, "invalid limit/offset")
        status = params["status"][0] if params.get("status") else None
        if status is not None and status not in STATUSES:
            raise HTTPError(422, "invalid status")
        cursor = params["cursor"][0] if params.get("cursor") else None
        context = page_context(user, status)
        count_args: list[Any] = [user] + ([status] if status else [])
        if cursor is None:
            page_args = [*count_args, limit + 1, offset]
        elif offset:
            raise HTTPError(422, "give `cursor` or a non-zero `offset`, not both")
        else:
            page_args = [*count_args, *decode_page_cursor(cursor, context), limit + 1]
        async with self.connection(user) as conn:
            rows = await conn.fetch(LIST_SQL[status is not None, cursor is not None], *page_args)
            # Past the last page there is no row for the count to ride on: count separately (the app too).
            total = rows[0]["total"] if rows else await conn.fetchval(COUNT_SQL[status is not None], *count_args)
        items = []
        for row in rows[:limit]:
            item = dict(row)
            del item["total"]
            items.append(item)
        next_cursor = encode_page_cursor(items[-1], context) if len(rows) > limit else None
        return dumps({"items": items, "total": total, "limit": limit, "offset": offset, "next_cursor": next_cursor})

    async def get_task(self, user: str, task_id: uuid.UUID) -> tuple[Task, bytes]:
        async with self.connection(user) as conn:
            row = await conn.fetchrow(GET_SQL, task_id, user)
        if row is None:
            raise HTTPError(404, "Task not found")
        return _versioned(row)

    async def create_task(self, user: str, body: object) -> tuple[Task, bytes]:
        values = validate_fields(body, partial=False)
        now = datetime.now(UTC)
        async with self.connection(user) as conn:
            row = await conn.fetchrow(
                CREATE_SQL,
                uuid.uuid4(),
                user,
                values["title"],
                values.get("description"),
                values.get("status", "pending"),
                values.get("priority", "medium"),
                values.get("due_date"),
                now,
                now,
                1,
                "task_changes",
                " ",
                user,
                None,
                1,
            )
        return _versioned(row)

    async def patch_task(self, user: str, task_id: uuid.UUID, body: object) -> tuple[Task, bytes]:
        values = validate_fields(body, partial=True)
        if not values:
            return await self.get_task(user, task_id)
        fields = tuple(sorted(values))
        async with self.connection(user) as conn:
            row = await conn.fetchrow(
                patch_sql(fields),
                *(values[name] for name in fields),
                datetime.now(UTC),
                1,
                "task_changes",
                " ",
                user,
                None,
                task_id,
                1,
            )
        if row is None:
            raise HTTPError(404, "Task not found")
        return _versioned(row)

    async def delete_task(self, user: str, task_id: uuid.UUID) -> None:
        # Not measured (no profile deletes), so not in the statement check: the app's statements
        # without its tombstone purge.
        now = datetime.now(UTC)
        async with self.connection(user) as conn, conn.transaction(isolation=BEGIN):
            seq = await conn.fetchval(STAMP_SQL, user, 1, 0, now, "task_changes", " ", 1)
            deleted = await conn.fetchval(DELETE_SQL, task_id, user)
            if deleted is None:
                raise HTTPError(404, "Task not found")
            await conn.execute(TOMBSTONE_SQL, deleted, user, seq, now)


def _versioned(row: Any) -> tuple[Task, bytes]:
    task = dict(row)
    version = task.pop("version")
    task.pop("seq", None)  # the stamp's, returned for the change feed's purge
    task.pop("purge_due_at", None)
    return task, f'"{version}"'.encode()


app = App()
