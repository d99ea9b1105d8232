"""Idempotency-Key on POST /api/tasks: retries replay, concurrent duplicates create one task."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.database import Database
from app.services.idempotency import keys
from tests.support import assert_problem, auth, new_user


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def count(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    total: int = (await client.get("/api/tasks", headers=headers)).json()["total"]
    return total


async def test_idempotency_same_key_same_body_replays_first_response(client: httpx.AsyncClient) -> None:
    headers, key = auth(new_user()), str(uuid.uuid4())
    first = await client.post("/api/tasks", json={"title": "pay rent"}, headers=keyed(headers, key))
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    # Same body in another key order and with a default spelled out: still the same request.
    again = await client.post(
        "/api/tasks", json={"status": "pending", "title": "pay rent"}, headers=keyed(headers, key)
    )
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(client, headers) == 1


async def test_idempotency_same_key_different_body_is_422(client: httpx.AsyncClient) -> None:
    headers, key = auth(new_user()), str(uuid.uuid4())
    assert (await client.post("/api/tasks", json={"title": "a"}, headers=keyed(headers, key))).status_code == 201
    response = await client.post("/api/tasks", json={"title": "b"}, headers=keyed(headers, key))
    assert_problem(response, 422)
    assert await count(client, headers) == 1


async def test_idempotency_keys_are_per_user(client: httpx.AsyncClient) -> None:
    alice, bob, key = auth(new_user()), auth(new_user()), str(uuid.uuid4())
    a = await client.post("/api/tasks", json={"title": "same"}, headers=keyed(alice, key))
    b = await client.post("/api/tasks", json={"title": "same"}, headers=keyed(bob, key))
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers


async def test_idempotency_without_key_creates_each_time(client: httpx.AsyncClient) -> None:
    headers = auth(new_user())
    for _ in range(2):
        assert (await client.post("/api/tasks", json={"title": "x"}, headers=headers)).status_code == 201
    assert await count(client, headers) == 2


async def test_idempotency_concurrent_duplicates_create_exactly_one_task(client: httpx.AsyncClient) -> None:
    headers, key = auth(new_user()), str(uuid.uuid4())
    responses = await asyncio.gather(
        *(client.post("/api/tasks", json={"title": "once"}, headers=keyed(headers, key)) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [201] * 10
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 9
    assert await count(client, headers) == 1


async def test_idempotency_failed_request_does_not_burn_the_key(client: httpx.AsyncClient) -> None:
    headers, key = auth(new_user()), str(uuid.uuid4())
    assert (await client.post("/api/tasks", json={"title": ""}, headers=keyed(headers, key))).status_code == 422
    assert (await client.post("/api/tasks", json={"title": "ok"}, headers=keyed(headers, key))).status_code == 201


async def test_idempotency_key_expires_after_24_hours(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = new_user()
    headers, key = auth(user), str(uuid.uuid4())
    first = await client.post("/api/tasks", json={"title": "daily"}, headers=keyed(headers, key))
    database: Database = app.state.database
    async with database.engine.begin() as connection:
        # Age the stored key as 25 hours would.
        await connection.execute(
            update(keys)
            .where(keys.c.user_id == user, keys.c.key == key)
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )
    second = await client.post("/api/tasks", json={"title": "daily"}, headers=keyed(headers, key))
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert await count(client, headers) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "ünïcode"])
async def test_idempotency_invalid_key_is_422(client: httpx.AsyncClient, key: str) -> None:
    headers = [(name.encode(), value.encode()) for name, value in auth(new_user()).items()]
    response = await client.post(
        "/api/tasks", json={"title": "x"}, headers=[*headers, (b"Idempotency-Key", key.encode())]
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["header", "idempotency-key"]
