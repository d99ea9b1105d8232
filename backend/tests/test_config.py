"""Startup configuration: bad settings stop the server with one line naming the variable, never its value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.config import Settings, config_error_line
from tests.support import BACKEND_DIR

# Subprocesses and real servers: left out of `make test-fast`.
pytestmark = pytest.mark.slow

GOOD_SECRET = "a-perfectly-fine-secret-of-more-than-32-bytes"


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the production entry point with only `env` (plus PATH), expecting it to refuse to start."""
    base = {"PATH": os.environ["PATH"], "ENV_FILE": "/dev/null", "PORT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "app.serve"],
        cwd=BACKEND_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "variable", "secret_value"),
    [
        ({"JWT_SECRET": "short-secret-value"}, "JWT_SECRET", "short-secret-value"),
        ({}, "JWT_SECRET", None),
        ({"JWT_SECRET": GOOD_SECRET, "PORT": "not-a-port-xyz"}, "PORT", "not-a-port-xyz"),
        ({"JWT_SECRET": GOOD_SECRET, "JWT_ALGORITHM": "none"}, "JWT_ALGORITHM", None),
        ({"JWT_SECRET": GOOD_SECRET, "LOG_LEVEL": "chatty-level"}, "LOG_LEVEL", "chatty-level"),
        ({"JWT_SECRET": GOOD_SECRET, "WEB_CONCURRENCY": "lots-of-workers"}, "WEB_CONCURRENCY", "lots-of-workers"),
        (
            {"JWT_SECRET": GOOD_SECRET, "JWT_ALGORITHMS": "EdDSA,HS256", "JWT_JWKS_URL": "http://x/jwks"},
            "JWT_ALGORITHMS",
            None,
        ),
        (
            {"JWT_SECRET": GOOD_SECRET, "DATABASE_URL": "mysql://root:hunter2-db-pass@db/x"},
            "DATABASE_URL",
            "hunter2-db-pass",
        ),
        (
            {"JWT_SECRET": GOOD_SECRET, "DATABASE_URL": "postgresql://u:hunter2-db-pass@h/db?sslmode=bogus"},
            "DATABASE_URL",
            "hunter2-db-pass",
        ),
    ],
)
def test_config_invalid_setting_stops_startup_with_one_line(
    env: dict[str, str], variable: str, secret_value: str | None
) -> None:
    result = start(env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error:")
    assert variable in lines[0]
    for value in filter(None, (secret_value, env.get("JWT_SECRET"))):
        assert value not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"JWT_SECRET": "x" * 40, "JWT_ALGORITHM": "HS384"}, "JWT_SECRET"),
        ({"JWT_SECRET": "x" * 60, "JWT_ALGORITHM": "HS512"}, "JWT_SECRET"),
        ({"JWT_SECRET": ""}, "JWT_SECRET"),
        ({"JWT_JWKS_URL": "localhost:3000/api/auth/jwks"}, "JWT_JWKS_URL"),
        ({"JWT_JWKS_URL": "http://localhost:3000/api/auth/jwks", "JWT_ALGORITHMS": ""}, "JWT_ALGORITHMS"),
        (
            {"JWT_SECRET": GOOD_SECRET, "DATABASE_URL": "postgresql://u:pw@h/db?sslmode=require&sslrootcert=/nope.crt"},
            "DATABASE_URL",
        ),
        (
            {"JWT_SECRET": GOOD_SECRET, "DATABASE_URL": "postgresql://u:pw@h/db?options=-c%20search_path%3Dx"},
            "DATABASE_URL",
        ),
    ],
)
def test_config_invalid_combination_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate(env)  # these values only: no environment, no .env
    line = config_error_line(caught.value)
    assert variable in line
    assert "pw" not in line and "x" * 40 not in line


def test_config_neon_endpoint_option_is_accepted() -> None:
    url = "postgresql://u:pw@ep-a-1.aws.neon.tech/db?sslmode=require&options=endpoint%3Dep-a-1"
    settings = Settings.model_validate({"JWT_SECRET": GOOD_SECRET, "DATABASE_URL": url})
    assert settings.DATABASE_URL.get_secret_value() == url


def test_config_imports_no_fastapi() -> None:
    # Settings must not pull in the web framework, nor the engine module that depends on it.
    code = (
        "import sys, app.config; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fastapi' or m == 'app.database'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BACKEND_DIR, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
