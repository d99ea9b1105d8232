"""Structured logs: one JSON object per line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with `extra=` and belongs in the line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON line with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


# Libraries that log SQL, parameters or URLs at DEBUG/INFO: capped at WARNING whatever LOG_LEVEL says,
# so statements, task contents and connection details never reach the logs.
_CHATTY_LIBRARIES = ("aiosqlite", "sqlalchemy", "asyncpg", "httpx", "httpcore")


def quiet_libraries() -> None:
    """Cap the chatty libraries at WARNING."""
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str) -> None:
    """Send the app's and uvicorn's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    quiet_libraries()
    # Our middleware writes the access log; uvicorn's own would duplicate it without the request id.
    logging.getLogger("uvicorn.access").disabled = True
