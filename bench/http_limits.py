"""HTTP parser cost: our bounded httptools protocol vs stock httptools vs h11 (README "Limits").

    .venv/bin/python bench/http_limits.py [--duration 10] [--rounds 3] [--flood-mb 16]

For each server variant, on SQLite in a temporary folder: requests/s of wrk (1 thread, 50 connections)
on `GET /nope` (a 404 problem+json: middleware, no database) and `GET /api/tasks` (token + a query),
then the CPU seconds and peak RSS the server spends on one connection that sends a header growing to
`--flood-mb` MiB (64 KiB per write) until the server answers or closes. Everything runs on 127.0.0.1
and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"
PYTHON = ROOT / ".venv" / "bin" / "python"
SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
MAX_HEADER_BYTES = 16 * 1024

VARIANTS = {
    # what `python -m app.serve` runs
    "httptools+limits": [str(PYTHON), "-m", "app.serve"],
    "httptools (stock)": [str(PYTHON), "-m", "uvicorn", "app.main:app", "--http", "httptools", "--no-access-log"],
    "h11 (16 KiB limit)": [
        str(PYTHON),
        "-m",
        "uvicorn",
        "app.main:app",
        "--http",
        "h11",
        "--h11-max-incomplete-event-size",
        str(MAX_HEADER_BYTES),
        "--no-access-log",
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def server(command: list[str], database: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "ENV_FILE": os.devnull,
        "DATABASE_URL": f"sqlite:///{database}",
        "JWT_SECRET": SECRET,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    cmd = [*command, "--port", str(port)] if "uvicorn" in command else command
    process = subprocess.Popen(cmd, cwd=BACKEND, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield process.pid, port
    finally:
        process.terminate()
        process.wait(timeout=30)


def wrk(port: int, path: str, seconds: int, token: str) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            "-c50",
            f"-d{seconds}s",
            "-H",
            f"Authorization: Bearer {token}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def flood(pid: int, port: int, megabytes: int) -> tuple[float, float, int, str]:
    """CPU seconds and wall seconds the server spent, bytes sent, and how it ended."""
    chunk = b"a" * 65536
    before = cpu_seconds(pid)
    started = time.monotonic()
    sent = 0
    outcome = "accepted everything"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(60)
        try:
            sock.sendall(b"GET /nope HTTP/1.1\r\nHost: bench\r\nX-Flood: ")
            while sent < megabytes * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
            outcome = sock.recv(64).split(b"\r\n")[0].decode() or "closed"
        except OSError as exc:
            outcome = f"closed ({type(exc).__name__})"
    # The server may still be chewing on what it received: wait until its CPU time stops growing.
    last = cpu_seconds(pid)
    while True:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now == last:
            break
        last = now
    return last - before, time.monotonic() - started, sent, outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood-mb", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    sys.path.insert(0, str(BACKEND))
    import jwt

    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "tasks.db"
        env = {**os.environ, "ENV_FILE": os.devnull, "DATABASE_URL": f"sqlite:///{database}", "JWT_SECRET": SECRET}
        subprocess.run([str(ROOT / ".venv" / "bin" / "alembic"), "upgrade", "head"], cwd=BACKEND, env=env, check=True)
        rps: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):  # rounds alternate the variants, so drift hits them alike
            for name, command in VARIANTS.items():
                with server(command, database) as (_, port):
                    for path in ("/nope", "/api/tasks"):
                        wrk(port, path, 2, token)  # warm-up
                        rps.setdefault((name, path), []).append(wrk(port, path, args.duration, token))
        print(f"wrk -t1 -c50 -d{args.duration}s, median of {args.rounds} rounds (requests/s)")
        print("| server | GET /nope | GET /api/tasks |")
        print("|---|--:|--:|")
        for name in VARIANTS:
            cells = [f"{statistics.median(rps[(name, path)]):,.0f}" for path in ("/nope", "/api/tasks")]
            print(f"| {name} | {' | '.join(cells)} |")
        print(f"\none connection sending a header growing to {args.flood_mb} MiB")
        print("| server | server CPU s | wall s | bytes sent | peak RSS MiB | outcome |")
        print("|---|--:|--:|--:|--:|---|")
        for name, command in VARIANTS.items():
            with server(command, database) as (pid, port):
                cpu, wall, sent, outcome = flood(pid, port, args.flood_mb)
                print(f"| {name} | {cpu:.2f} | {wall:.2f} | {sent:,} | {peak_rss_mib(pid):.0f} | {outcome} |")


if __name__ == "__main__":
    main()
