"""Database tables."""

from app.models.idempotency import IdempotencyKey
from app.models.task import Task, TaskPriority, TaskStatus

__all__ = ["IdempotencyKey", "Task", "TaskPriority", "TaskStatus"]
