"""Database tables."""

from app.models.task import Task, TaskPriority, TaskStatus

__all__ = ["Task", "TaskPriority", "TaskStatus"]
