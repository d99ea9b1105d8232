"""Running wrk and parsing the JSON summary printed by lua/tasks.lua."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from taskbench.config import LUA_SCRIPT

MARKER = "BENCH_JSON "


def ensure_wrk() -> str:
    """Path to wrk, installing the Debian package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get", file=sys.stderr)
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" [")[0] if first else "wrk (unknown version)"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_us: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int  # wrk counts HTTP status >= 400 (no 3xx are expected)
    socket_errors: int  # connect + read + write + timeout

    @classmethod
    def from_summary(cls, s: dict[str, Any]) -> WrkResult:
        seconds = s["duration_us"] / 1e6
        return cls(
            requests=s["requests"],
            duration_us=s["duration_us"],
            rps=s["requests"] / seconds if seconds else 0.0,
            p50_ms=s["p50_us"] / 1000,
            p90_ms=s["p90_us"] / 1000,
            p99_ms=s["p99_us"] / 1000,
            max_ms=s["max_us"] / 1000,
            non_2xx=s["status"],
            socket_errors=s["connect"] + s["read"] + s["write"] + s["timeout"],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Load:
    wrk: str
    threads: int
    connections: int
    data_file: Path


def run_wrk(load: Load, url: str, profile: str, seconds: int) -> WrkResult:
    cmd = [
        load.wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{seconds}s",
        # Long timeout: a slow endpoint should show up as latency, not errors.
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        profile,
        str(load.data_file),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith(MARKER):
            return WrkResult.from_summary(json.loads(line[len(MARKER) :]))
    raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
