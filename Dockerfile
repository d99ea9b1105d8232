# The Task API as a container image.
#
#   docker build -t task-api .
#   # 1. migrations: an explicit step, once per deploy, before the new version serves
#   #    (only DATABASE_URL, or DATABASE_URL_DIRECT for a pooled URL, is needed)
#   docker run --rm -e DATABASE_URL=postgresql://... task-api alembic upgrade head
#   # 2. serve: uvicorn via `python -m app.serve` on 0.0.0.0:8000, WEB_CONCURRENCY workers
#   docker run -p 8000:8000 --stop-timeout 35 -e DATABASE_URL=postgresql://... -e JWT_SECRET=... task-api
#
# The base image is pinned by tag only: our machines have no Docker engine and no registry access
# to resolve a digest. Where one is reachable, pin it as python:3.11.14-slim-bookworm@sha256:<digest>.
# This recipe is linted by hadolint (backend/tests/test_dockerfile.py) but not built on our machines.

# --- build: a virtualenv with exactly the locked runtime dependencies -------------------------
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY backend/requirements.lock /tmp/requirements.lock
# --require-hashes: every file is the one the lock names; --only-binary: wheels only, so no
# compiler is needed and nothing runs setup.py; --no-deps: the lock already lists every package.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: --no-deps \
        -r /tmp/requirements.lock

# --- runtime: the venv and the code, run as an unprivileged user -----------------------------
FROM python:3.11.14-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/backend \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv
WORKDIR /app/backend
# Code owned by root and read-only to the app user; only data/ (the zero-config SQLite file,
# mount a volume there to keep it) is writable.
COPY backend/alembic.ini ./
COPY backend/alembic ./alembic
COPY backend/app ./app
RUN install --directory --owner=app --group=app /app/backend/data

USER 10001:10001
EXPOSE 8000

# Python's standard library only: the slim image has no curl. Any non-2xx (503) or no answer fails.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

# SIGTERM (docker stop) drains in-flight requests for up to 30 s: give `--stop-timeout 35`.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app.serve"]
