"""Serve the API with uvicorn: `python -m app.serve` (HOST, PORT, WEB_CONCURRENCY from the settings)."""

from __future__ import annotations

import contextlib

import uvicorn

from app.httpserver import LimitedHttpToolsProtocol
from app.logging import configure_logging
from app.main import load_settings
from app.metrics import multiprocess_dir


def main() -> None:
    """Run the server; several worker processes when WEB_CONCURRENCY > 1."""
    settings = load_settings()  # fail fast, with one line, before forking workers
    configure_logging(settings.LOG_LEVEL)
    # Metrics summed over every worker: an emptied multiprocess directory, made before they start.
    with multiprocess_dir() if settings.METRICS_ENABLED else contextlib.nullcontext():
        uvicorn.run(
            "app.main:app",
            host=settings.HOST,
            port=settings.PORT,
            workers=settings.WEB_CONCURRENCY,
            log_config=None,  # keep our JSON logging
            access_log=False,  # the app's middleware writes the structured access log
            proxy_headers=True,
            forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
            timeout_graceful_shutdown=30,
            # uvicorn kills a worker that does not answer its supervisor within this many seconds
            # (default 5): on a busy small machine a starting worker can take longer, and killing it
            # only adds load (seen as a restart loop under load average 10 on 2 cores).
            timeout_worker_healthcheck=30,
            # Bounded request heads, read deadlines, problem+json refusals (app/httpserver.py).
            http=LimitedHttpToolsProtocol,
            ws="none",  # no WebSocket routes; an upgrade would leave the limits above behind
            # Connections (idle keep-alive ones included) or requests in flight per worker; uvicorn
            # answers the next one 503 at once (its check is `>=`, hence the + 1).
            limit_concurrency=settings.MAX_CONNECTIONS + 1,
        )


if __name__ == "__main__":
    main()
