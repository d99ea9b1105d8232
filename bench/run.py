"""Task API benchmark: our app vs a raw-ASGI baseline, under wrk.

Run with `.venv/bin/python bench/run.py` (what `make bench` calls). Settings
come from the environment; see bench/README.md. Progress goes to stderr, the
markdown report to stdout and bench/results/latest.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from taskbench import db
from taskbench.config import (
    BACKEND_DIR,
    BASELINE_APP,
    BENCH_DIR,
    OURS_APP,
    RESULTS_DIR,
    Settings,
)
from taskbench.report import BASELINE, OURS, BenchRun, Memory, Soak, SyncRun, render
from taskbench.server import RssSampler, Server
from taskbench.smoke import smoke_check
from taskbench.sync import EventProbe, head_cursors
from taskbench.workload import (
    MAIN_PROFILES,
    MCP_PROFILES,
    MIXED,
    SCALE_PROFILES,
    SYNC_PROFILES,
    Profile,
    Workload,
    build_workload,
    make_secret,
    write_lua_data,
)
from taskbench.wrk import Load, WrkResult, ensure_wrk, run_wrk, wrk_version


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def app_env(settings: Settings, secret: str) -> dict[str, str]:
    """What the app (and its migrations) read; the issuer/audience/JWKS knobs are
    blanked so a developer's .env cannot make the bench tokens invalid, and rate
    limits are off."""
    return {
        "DATABASE_URL": settings.app_database_url,
        "JWT_SECRET": secret,
        "JWT_ALGORITHM": "HS256",
        "JWT_ISSUER": "",
        "JWT_AUDIENCE": "",
        "JWT_JWKS_URL": "",
        # The bench measures the API, not a budget: one user's profile (the 100,000-task user) sends
        # far more than a read budget. README "Operating it" has the cost of the limits.
        "RATE_LIMIT_ENABLED": "false",
    }


def make_server(name: str, settings: Settings, workload: Workload, *, as_baseline: bool, tag: str) -> Server:
    env = app_env(settings, workload.secret)
    if as_baseline:
        env["BASELINE_POOL_SIZE"] = str(settings.baseline_pool_size)
    return Server(
        name=name,
        app=BASELINE_APP if as_baseline else OURS_APP,
        cwd=BENCH_DIR if as_baseline else BACKEND_DIR,
        env=env,
        serve_cmd=settings.serve_cmd if as_baseline else settings.ours_serve_cmd,
        workers=settings.workers,
        log_path=RESULTS_DIR / "logs" / f"{name}-{tag}.log",
    )


def measure(load: Load, server: Server, profile: Profile, settings: Settings) -> WrkResult:
    if settings.warmup > 0:
        run_wrk(load, server.url, profile.name, settings.warmup)
    result = run_wrk(load, server.url, profile.name, settings.duration)
    if profile.writes:
        db.reset(settings.database_url)
    log(
        f"  {server.name:8} {profile.name:22} {result.rps:8,.0f} req/s  "
        f"p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  "
        f"non-2xx {result.non_2xx}  socket errors {result.socket_errors}"
    )
    return result


def run_session(
    bench: BenchRun,
    server: Server,
    profiles: list[Profile],
    load: Load,
    workload: Workload,
) -> None:
    """One server start: pre-flight checks, then each profile; tracks RSS."""
    with server:
        smoke_check(server.url, workload, mcp=any(p in MCP_PROFILES for p in profiles))
        db.reset(bench.settings.database_url)  # undo the smoke check's writes
        sampler = RssSampler(server.worker_pids())
        startup = sampler.sample()
        sampler.start()
        for profile in profiles:
            bench.add(
                server.name,
                profile.name,
                measure(load, server, profile, bench.settings),
            )
        peaks = sampler.stop()
    memory = bench.memory.setdefault(server.name, Memory())
    if not memory.startup_kib:
        memory.startup_kib = list(startup.values())
    memory.add_peak(list(peaks.values()))


def run_soak(bench: BenchRun, server: Server, load: Load, workload: Workload) -> None:
    settings = bench.settings
    with server:
        smoke_check(server.url, workload)
        db.reset(settings.database_url)
        run_wrk(load, server.url, MIXED.name, max(settings.warmup, 1))
        sampler = RssSampler(server.worker_pids())
        start = sampler.sample()
        log(f"soak: mixed for {settings.soak} s")
        result = run_wrk(load, server.url, MIXED.name, settings.soak)
        end = sampler.sample()
    db.reset(settings.database_url)
    bench.soak = Soak(settings.soak, list(start.values()), list(end.values()), result)


def run_sync(bench: BenchRun, server: Server, load: Load, workload: Workload, data_file: Path) -> None:
    """Ours only: the feed polled with nothing new (next to a GET by id), and the event delay, idle
    and under the mixed load (taskbench/sync.py)."""
    settings = bench.settings
    with server:
        smoke_check(server.url, workload)
        db.reset(settings.database_url)
        write_lua_data(workload, data_file, head_cursors(server.url, workload))
        sync_load = Load(load.wrk, load.threads, load.connections, data_file)
        runs = {profile.name: measure(sync_load, server, profile, settings) for profile in SYNC_PROFILES}
        with EventProbe(server.url, workload) as idle:
            time.sleep(min(settings.duration, 5))
        log(f"  events, idle: {idle.delays.summary()}")
        with EventProbe(server.url, workload) as loaded:
            mixed = measure(sync_load, server, MIXED, settings)
        log(f"  events, under mixed load: {loaded.delays.summary()}")
    db.reset(settings.database_url)
    bench.sync = SyncRun(runs=runs, idle=idle.delays, loaded=loaded.delays, mixed=mixed)


def prepare_database(settings: Settings, secret: str) -> tuple[str, db.Fixtures]:
    url = settings.database_url
    db.ensure_database(url)
    schema = db.ensure_schema(url, app_env(settings, secret))
    log(f"schema via {schema}; seeding if needed")
    if db.ensure_seeded(url):
        log(f"seeded {db.SEEDED_ROWS:,} tasks")
    return schema, db.load_fixtures(url)


def main() -> int:
    settings = Settings.from_env()
    wrk = ensure_wrk()
    secret = make_secret()
    schema, fixtures = prepare_database(settings, secret)
    workload = build_workload(secret, fixtures)
    ours_is_baseline = not (BACKEND_DIR / "app" / "main.py").is_file()
    if ours_is_baseline:
        log("backend/app/main.py missing: benchmarking the baseline as 'ours'")

    def server(name: str, tag: str) -> Server:
        as_baseline = name == BASELINE or ours_is_baseline
        return make_server(name, settings, workload, as_baseline=as_baseline, tag=tag)

    bench = BenchRun(
        settings=settings,
        ours_cmd=server(OURS, "cmd").describe(),
        baseline_cmd=server(BASELINE, "cmd").describe(),
        ours_is_baseline=ours_is_baseline,
        schema=schema,
        pg_version=fixtures.pg_version,
        wrk_version=wrk_version(wrk),
    )
    with tempfile.TemporaryDirectory(prefix="taskbench-") as tmp:
        load = Load(wrk, settings.threads, settings.connections, Path(tmp) / "data.lua")
        write_lua_data(workload, load.data_file)
        for round_no in range(1, settings.rounds + 1):
            # Alternate who goes first so drift (thermal, autovacuum) evens out.
            order = [OURS, BASELINE] if round_no % 2 else [BASELINE, OURS]
            last = round_no == settings.rounds
            profiles = MAIN_PROFILES + (SCALE_PROFILES if last else [])
            for name in order:
                log(f"round {round_no}/{settings.rounds}: {name}")
                # The baseline has no MCP endpoint: the agent profiles run on ours only.
                agent = MCP_PROFILES if name == OURS and not ours_is_baseline else []
                run_session(bench, server(name, f"r{round_no}"), profiles + agent, load, workload)
        if not ours_is_baseline:
            log("sync: the change feed and live events (ours only)")
            run_sync(bench, server(OURS, "sync"), load, workload, Path(tmp) / "sync.lua")
        if settings.soak > 0:
            run_soak(bench, server(OURS, "soak"), load, workload)
    bench.plans = db.explain_list_queries(settings.database_url)

    report = render(bench)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest.md").write_text(report)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(bench.to_json(), indent=2, default=str))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
