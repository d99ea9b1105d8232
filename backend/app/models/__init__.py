"""Database tables."""

from app.models.changes import ChangeCounter, TaskTombstone
from app.models.counts import TaskCount
from app.models.idempotency import IdempotencyKey
from app.models.task import Task, TaskPriority, TaskStatus

__all__ = ["ChangeCounter", "IdempotencyKey", "Task", "TaskCount", "TaskPriority", "TaskStatus", "TaskTombstone"]
