"""Serve the API with uvicorn: `python -m app.serve` (HOST, PORT, WEB_CONCURRENCY from the settings)."""

from __future__ import annotations

import uvicorn

from app.logging import configure_logging
from app.main import load_settings


def main() -> None:
    """Run the server; several worker processes when WEB_CONCURRENCY > 1."""
    settings = load_settings()  # fail fast, with one line, before forking workers
    configure_logging(settings.LOG_LEVEL)
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
    )


if __name__ == "__main__":
    main()
