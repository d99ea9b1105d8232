"""`GET /health`: liveness and database reachability, no auth."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from app.database import Db
from app.errors import ServiceUnavailable, is_database_unavailable
from app.openapi import problem_responses

router = APIRouter(tags=["health"])


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
        await db.ping()
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        raise ServiceUnavailable("The database is unreachable.", database="unreachable") from None
    return Health()
