"""Idempotency-Key for POST /api/tasks: every query scoped by the owner's id.

The key is claimed with an INSERT inside the request's own transaction. A concurrent request with
the same key blocks on that row until the first one commits (then replays its response) or rolls
back (then claims the key itself), so exactly one task is created, across any number of processes.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import Problem, ServiceUnavailable
from app.models.idempotency import IdempotencyKey

KEY_TTL = timedelta(hours=24)
keys = IdempotencyKey.__table__  # type: ignore[attr-defined]
k = keys.c


class IdempotencyKeyReused(Problem, status=422):
    """The Idempotency-Key was already used with a different request body."""


@dataclass(frozen=True)
class StoredResponse:
    """What the first request with a key created: the task's id, version and JSON as first returned."""

    task_id: uuid.UUID
    version: int
    body: bytes


def fingerprint(body: dict[str, Any]) -> str:
    """A stable hash of the validated request body (key order and defaults do not matter)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def claim(conn: AsyncConnection, owner_id: str, key: str, body_fingerprint: str) -> StoredResponse | None:
    """Claim `key` for this request (None: go ahead and create), or the response to replay."""
    now = datetime.now(UTC)
    # Expired keys of this owner are forgotten first, so a key can be reused after 24 h.
    await conn.execute(delete(keys).where(k.user_id == owner_id, k.created_at < now - KEY_TTL))
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    claim_key = (
        dialect.insert(keys)
        .values(user_id=owner_id, key=key, fingerprint=body_fingerprint, created_at=now)
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(k.key)
    )
    stored = select(k.fingerprint, k.task_id, k.etag, k.response_body).where(k.user_id == owner_id, k.key == key)
    for _ in range(3):
        if (await conn.execute(claim_key)).one_or_none() is not None:
            return None
        row = (await conn.execute(stored)).one_or_none()
        if row is not None:
            break
        # The conflicting row expired and was deleted by a concurrent request in between: claim again.
    else:
        raise ServiceUnavailable("The Idempotency-Key is being reused concurrently; retry.")
    if row.fingerprint != body_fingerprint:
        raise IdempotencyKeyReused()
    return StoredResponse(task_id=row.task_id, version=int(row.etag.strip('"')), body=row.response_body.encode())


async def remember(conn: AsyncConnection, owner_id: str, key: str, response: StoredResponse) -> None:
    """Store the response of the request that claimed `key`, in the same transaction."""
    await conn.execute(
        update(keys)
        .where(k.user_id == owner_id, k.key == key)
        .values(task_id=response.task_id, etag=f'"{response.version}"', response_body=response.body.decode())
    )
