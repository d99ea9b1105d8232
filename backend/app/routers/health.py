"""`GET /health`: liveness and database reachability, no auth."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from app.database import Db
from app.errors import ServiceUnavailable, is_database_unavailable
from app.openapi import problem_responses

router = APIRouter(tags=["health"])

# A ping that times out while this process's event loop was stalled says nothing about the
# database: its answer may have been waiting behind the stall. Such a ping is retried, at most
# twice; one that times out on a responsive loop is a 503 at once.
PING_ATTEMPTS = 3
_TICK_SECONDS = 0.05
STALL_SECONDS = 0.5


class _LoopLag:
    """Measures the longest lag of the event loop (seconds, in `worst`) while the block runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._loop = asyncio.get_running_loop()
        self._tick_started = self._loop.time()
        self._ticker: asyncio.Task[None] | None = None

    def _note(self) -> None:
        self.worst = max(self.worst, self._loop.time() - self._tick_started - _TICK_SECONDS)

    async def _tick(self) -> None:
        # The clock starts in __init__, not when this task first runs: a stall that began before then
        # counts too.
        while True:
            await asyncio.sleep(_TICK_SECONDS)
            self._note()
            self._tick_started = self._loop.time()

    async def __aenter__(self) -> _LoopLag:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._note()  # the tick still asleep: a stall that lasted until the timeout counts too
        if self._ticker is not None:
            self._ticker.cancel()  # not awaited: that could swallow a cancellation of our own task


async def ping_unless_stalled(db: Db) -> None:
    """`db.ping()`, retried when it timed out while the event loop was stalled."""
    for attempt in range(1, PING_ATTEMPTS + 1):
        lag = _LoopLag()
        try:
            async with lag:
                await db.ping()
            return
        except TimeoutError:
            if attempt == PING_ATTEMPTS or lag.worst < STALL_SECONDS:
                raise


class Health(BaseModel):
    """The service and its database are up."""

    # Both members are always sent, so the response schema marks them required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    status: Literal["ok"] = "ok"
    database: Literal["ok"] = "ok"


@router.get(
    "/health",
    operation_id="getHealth",
    summary="Health check",
    response_description="The service and its database are up.",
    responses=problem_responses(ServiceUnavailable),
)
async def health(db: Db) -> Health:
    """200 when the database answers, 503 problem+json when it does not."""
    try:
        await ping_unless_stalled(db)
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        raise ServiceUnavailable("The database is unreachable.", database="unreachable") from None
    return Health()
