"""What rate limits cost (README "Operating it"): the bench's mixed profile on our app with limits
off, on in memory, and on in Redis.

    .venv/bin/python bench/ratelimit_overhead.py [--duration 10] [--rounds 3] [--variants off,memory,redis]

Same database, workload, tokens and wrk load as `make bench` (bench/README.md), on our app only
(`python -m app.serve`, WEB_CONCURRENCY workers) with the default limits (1200 reads and 300 writes
per user and minute: the 1,000 rotating users stay under them, so nothing is refused). Redis is a
`redis-server` of this script's own on a free 127.0.0.1 port. Besides requests/s and latency it
reports CPU milliseconds per request: the workers' own, and Redis's. On a shared machine CPU per
request varies far less than throughput, so it is the steadier measure of what the limits add.
The variants alternate within each round; medians of the rounds. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import app_env, log, prepare_database
from taskbench import db
from taskbench.config import BACKEND_DIR, OURS_APP, RESULTS_DIR, Settings
from taskbench.server import Server, free_port
from taskbench.smoke import smoke_check
from taskbench.workload import MIXED, build_workload, make_secret, write_lua_data
from taskbench.wrk import Load, ensure_wrk, run_wrk


def cpu_seconds(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False)
        if ping.stdout.strip() == "PONG":
            return process, port
        time.sleep(0.05)
    process.kill()
    sys.exit("redis-server did not start")


def redis_calls(port: int) -> int:
    """Script calls (EVALSHA and EVAL) Redis has run since it started."""
    stats = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True, check=True
    ).stdout
    calls = 0
    for line in stats.splitlines():
        name, _, fields = line.partition(":")
        if name in ("cmdstat_evalsha", "cmdstat_eval"):
            calls += int(fields.split(",")[0].removeprefix("calls="))
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description="What rate limits cost on the mixed profile.")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="off,memory,redis", help="which of off, memory, redis to run")
    args = parser.parse_args()
    settings = Settings.from_env()
    wrk = ensure_wrk()
    secret = make_secret()
    _, fixtures = prepare_database(settings, secret)
    workload = build_workload(secret, fixtures)
    results: dict[str, list[tuple[float, float, float, float, float]]] = {}
    cpu_by_round: dict[str, dict[int, float]] = {}  # variant -> round -> app + Redis CPU ms/request
    with tempfile.TemporaryDirectory(prefix="ratelimit-bench-") as tmp:
        redis, redis_port = start_redis(Path(tmp))
        variants = {
            "off": {"RATE_LIMIT_ENABLED": "false"},
            "memory": {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_STORAGE_URL": "memory://"},
            "redis": {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_STORAGE_URL": f"redis://127.0.0.1:{redis_port}/0"},
        }
        variants = {name: variants[name] for name in args.variants.split(",")}
        try:
            load = Load(wrk, settings.threads, settings.connections, Path(tmp) / "data.lua")
            write_lua_data(workload, load.data_file)
            for round_no in range(1, args.rounds + 1):
                names = list(variants)
                order = names[round_no % len(names) :] + names[: round_no % len(names)]
                for name in order:
                    env = {**app_env(settings, secret), **variants[name]}
                    server = Server(
                        name=f"ours-{name}",
                        app=OURS_APP,
                        cwd=BACKEND_DIR,
                        env=env,
                        serve_cmd=settings.ours_serve_cmd,
                        workers=settings.workers,
                        log_path=RESULTS_DIR / "logs" / f"ratelimit-{name}-r{round_no}.log",
                    )
                    with server:
                        smoke_check(server.url, workload)
                        db.reset(settings.database_url)
                        run_wrk(load, server.url, MIXED.name, max(settings.warmup, 1))
                        pids = server.worker_pids()
                        before = sum(cpu_seconds(pid) for pid in pids), cpu_seconds(redis.pid)
                        calls_before = redis_calls(redis_port)
                        result = run_wrk(load, server.url, MIXED.name, args.duration)
                        calls = redis_calls(redis_port) - calls_before
                        try:
                            after = sum(cpu_seconds(pid) for pid in pids), cpu_seconds(redis.pid)
                        except FileNotFoundError:
                            # A worker died during the run (on an overloaded box): its CPU is unknown.
                            after = None
                    db.reset(settings.database_url)
                    if after is None:
                        log(f"round {round_no} {name:6} skipped: a worker exited during the run")
                        continue
                    app_ms = (after[0] - before[0]) * 1000 / max(result.requests, 1)
                    redis_ms = (after[1] - before[1]) * 1000 / max(result.requests, 1)
                    row = (result.rps, result.p50_ms, result.p99_ms, app_ms, redis_ms)
                    results.setdefault(name, []).append(row)
                    cpu_by_round.setdefault(name, {})[round_no] = app_ms + redis_ms
                    log(
                        f"round {round_no} {name:6} {result.rps:7,.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                        f"p99 {result.p99_ms:6.1f} ms  app CPU {app_ms:.3f} ms/req  Redis CPU {redis_ms:.3f} ms/req  "
                        f"Redis calls per 100 requests {calls * 100 / max(result.requests, 1):.1f}  "
                        f"non-2xx {result.non_2xx}  socket errors {result.socket_errors}"
                    )
        finally:
            redis.terminate()
            redis.wait()
    print(f"mixed profile, {settings.workers} workers, {settings.connections} connections, medians of {args.rounds}")
    print("| limits | req/s | p50 ms | p99 ms | app CPU ms/req | Redis CPU ms/req | CPU vs off | per round vs off |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    off_rows = results.get("off", [])
    off_cpu = statistics.median(row[3] for row in off_rows) if off_rows else float("nan")
    for name, rows in results.items():
        rps, p50, p99, app_ms, redis_ms = (statistics.median(column) for column in zip(*rows, strict=True))
        change = (app_ms + redis_ms) / off_cpu - 1
        # Each round against the same round's "off" (rounds with a skipped variant left out).
        off_by_round = cpu_by_round.get("off", {})
        paired = [cpu / off_by_round[r] - 1 for r, cpu in cpu_by_round[name].items() if r in off_by_round]
        per_round = ", ".join(f"{value:+.0%}" for value in paired)
        cells = f"{rps:,.0f} | {p50:.1f} | {p99:.1f} | {app_ms:.3f} | {redis_ms:.3f} | {change:+.1%}"
        print(f"| {name} | {cells} | {per_round} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
