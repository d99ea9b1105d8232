"""`npm ci` for the Node projects the tests use (TypeScript contract check, Better Auth, MCP client)."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.apps import IN_CI


def installed_as_pinned(directory: Path) -> bool:
    """True when node_modules holds exactly the versions package.json pins."""
    manifest = json.loads((directory / "package.json").read_text())
    wanted: dict[str, str] = {**manifest.get("dependencies", {}), **manifest.get("devDependencies", {})}
    for name, version in wanted.items():
        installed = directory / "node_modules" / name / "package.json"
        if not installed.exists() or json.loads(installed.read_text())["version"] != version:
            return False
    return True


def npm_ci(directory: Path) -> None:
    """Run `npm ci` in `directory` unless its node_modules already holds the pinned versions.

    A file lock per directory serialises concurrent callers (test processes, pytest-xdist);
    `--prefer-offline` lets a re-install work from the npm cache.
    """
    if installed_as_pinned(directory):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH; this test needs Node 20+")
    lock_path = Path(tempfile.gettempdir()) / f"task-api-npm-{directory.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_as_pinned(directory):  # another process installed it while we waited
            return
        args = [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"]
        subprocess.run(args, cwd=directory, check=True, stdout=subprocess.DEVNULL, timeout=600)


def node_with_packages(directory: Path, purpose: str) -> str:
    """The `node` executable, with `directory`'s pinned packages installed.

    Without Node the test skips, except with CI=true, where `purpose` must run and it fails.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if IN_CI:
            pytest.fail(f"node/npm not found and CI=true: {purpose} must run in CI")
        pytest.skip("node/npm not found")
    npm_ci(directory)
    return node
