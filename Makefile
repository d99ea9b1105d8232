# Every target installs what it needs first. Python 3.11 is the only prerequisite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
LOCK := backend/requirements-dev.lock
STAMP := $(VENV)/.installed
USER ?= demo

.PHONY: help install run migrate token test test-fast test-pooler lint format bench bench-smoke openapi mcp-tools clean

help:
	@echo "make run      install, migrate, serve on http://127.0.0.1:8000"
	@echo "make test     the test suite (SQLite, plus PostgreSQL when reachable)"
	@echo "make test-fast   SQLite only, in-process tests only (the inner loop, about 70 s)"
	@echo "make token USER=alice   print a bearer token for user 'alice'"
	@echo "make test-pooler   the database-dependent PostgreSQL tests again through a local PgBouncer with TLS"
	@echo "make lint     ruff + mypy --strict"
	@echo "make migrate  apply database migrations"
	@echo "make bench    benchmark against a hand-written asyncpg baseline (bench/README.md)"
	@echo "make bench-smoke   the benchmark's whole pipeline on tiny data in about a minute (CI)"
	@echo "make openapi  regenerate specs/001-backend-core-api/contracts/openapi.yaml"
	@echo "make mcp-tools  regenerate specs/001-backend-core-api/contracts/mcp-tools.json"

$(STAMP): $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	@touch $@

install: $(STAMP)

# A local .env with a fresh random JWT_SECRET, made once; never committed.
.env:
	@secret=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))'); \
	sed "s|^JWT_SECRET=.*|JWT_SECRET=$$secret|" .env.example > .env; \
	echo "wrote .env with a random JWT_SECRET"

migrate: $(STAMP) .env
	cd backend && $(BIN)/alembic upgrade head

run: migrate
	cd backend && $(BIN)/python -m app.serve

token: $(STAMP) .env
	@cd backend && $(BIN)/python -m app.devtoken "$(USER)"

test: $(STAMP)
	cd backend && $(BIN)/pytest

# The inner loop: SQLite only, in-process, no server processes or Node (about 70 s).
test-fast: $(STAMP)
	cd backend && TEST_DATABASES=sqlite $(BIN)/pytest -m "not slow" -q

# The PostgreSQL half of the suite again, through a local Neon-style pooler (PgBouncer, transaction
# mode, TLS; scripts/pgbouncer installs and starts it).
# Only the tests whose outcome depends on how the database is reached (statements, transactions,
# prepared statements, time limits, faults, LISTEN/NOTIFY, migrations): token, schema, contract,
# URL-parsing, HTTP-limit and rate-limit tests do not change behind a pooler and already ran in `make test`.
# Within these files, tests that do not use the session's database (their own cluster, database or
# pooler fixture: test_pooler, test_faults, ...) are deselected too (tests/conftest.py): they would
# repeat their `make test` run exactly.
POOLER_TESTS := test_tasks test_list test_keyset test_counts test_changes test_changes_race test_write_races \
	test_round_trips test_idempotency test_database test_events test_faults test_statement_limits test_pooler \
	test_migrations test_scale_out test_mcp test_health
test-pooler: $(STAMP)
	cd backend && TEST_DATABASE=pooler $(BIN)/pytest -k "not sqlite" $(POOLER_TESTS:%=tests/%.py)

lint: $(STAMP)
	cd backend && $(BIN)/ruff check . ../bench && $(BIN)/ruff format --check . ../bench && $(BIN)/mypy
	cd bench && $(BIN)/mypy --strict --config-file ../backend/pyproject.toml run.py taskbench baseline

format: $(STAMP)
	cd backend && $(BIN)/ruff format . ../bench && $(BIN)/ruff check --fix . ../bench

# The benchmark (bench/README.md): our app vs a hand-written asyncpg baseline under wrk, on the
# local PostgreSQL. SOAK=300 adds a 5-minute soak.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# The same pipeline on tiny data, a second per profile, in a database of its own: the pre-flight and
# statement checks and zero errors are all it enforces (CI runs it so the benchmark cannot rot).
bench-smoke: $(STAMP)
	BENCH_PROFILE=smoke $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) backend/data .pytest_cache backend/.pytest_cache

# The API contract from the app (backend/tests/test_contract.py fails when the file is stale).
openapi: $(STAMP)
	cd backend && $(BIN)/python -m app.openapi_export

# The agent tools' contract, the MCP tools/list result (backend/tests/test_mcp_contract.py fails
# when the file is stale).
mcp-tools: $(STAMP)
	cd backend && $(BIN)/python -m app.mcp.export
