"""Task API benchmark: our app vs a raw-ASGI baseline, under wrk.

Run with `.venv/bin/python bench/run.py` (what `make bench` calls). Settings
come from the environment; see bench/README.md. Progress goes to stderr, the
markdown report to stdout and bench/results/latest.md.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from taskbench import db, sqlcheck
from taskbench.config import (
    BACKEND_DIR,
    BASELINE_APP,
    BENCH_DIR,
    OURS_APP,
    RESULTS_DIR,
    Settings,
)
from taskbench.pgwire import WireRecorder
from taskbench.report import (
    BASELINE,
    OURS,
    BenchRun,
    Memory,
    Soak,
    StatementCheck,
    SyncRun,
    render,
)
from taskbench.server import RssSampler, Server
from taskbench.smoke import smoke_check
from taskbench.sync import EventProbe, head_cursors
from taskbench.workload import (
    KEYSET_PROFILE,
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

_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


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


def make_server(
    name: str,
    settings: Settings,
    workload: Workload,
    *,
    as_baseline: bool,
    tag: str,
    extra_env: dict[str, str] | None = None,
    workers: int | None = None,
) -> Server:
    env = app_env(settings, workload.secret)
    if as_baseline:
        env["BASELINE_POOL_SIZE"] = str(settings.baseline_pool_size)
    env.update(extra_env or {})
    return Server(
        name=name,
        app=BASELINE_APP if as_baseline else OURS_APP,
        cwd=BENCH_DIR if as_baseline else BACKEND_DIR,
        env=env,
        serve_cmd=settings.serve_cmd if as_baseline else settings.ours_serve_cmd,
        workers=settings.workers if workers is None else workers,
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
    """One server by itself (e.g. ratelimit_overhead.py's variants): pre-flight checks, then each
    profile; tracks RSS."""
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
    _note_memory(bench, server.name, startup, peaks)


def _note_memory(bench: BenchRun, name: str, startup: dict[int, int], peaks: dict[int, int]) -> None:
    memory = bench.memory.setdefault(name, Memory())
    if not memory.startup_kib:
        memory.startup_kib = list(startup.values())
    memory.add_peak(list(peaks.values()))


def run_paired_round(
    bench: BenchRun,
    round_no: int,
    servers: dict[str, Server],
    profiles: list[Profile],
    ours_only: list[Profile],
    load: Load,
    workload: Workload,
    then_ours: Callable[[Server], None] | None = None,
) -> None:
    """Both servers up at once, each profile measured on one then at once on the other (who goes first
    alternates by round and by profile), so each round gives each profile a ratio of two runs taken
    back to back. Profiles in `ours_only` (the baseline has no MCP door) run on ours only."""
    settings = bench.settings
    with contextlib.ExitStack() as stack:
        samplers: dict[str, RssSampler] = {}
        startups: dict[str, dict[int, int]] = {}
        for name, server in servers.items():
            stack.enter_context(server)
            smoke_check(server.url, workload, mcp=name == OURS and bool(ours_only))
            db.reset(settings.database_url)  # undo its writes before the next server's checks
            samplers[name] = RssSampler(server.worker_pids())
            startups[name] = samplers[name].sample()
            samplers[name].start()
        for index, profile in enumerate(profiles):
            order = [OURS, BASELINE] if (round_no + index) % 2 else [BASELINE, OURS]
            for name in order:
                if name in servers:
                    bench.add(
                        name,
                        profile.name,
                        measure(load, servers[name], profile, settings),
                        round_no,
                    )
        for profile in ours_only:
            if OURS in servers:
                bench.add(
                    OURS,
                    profile.name,
                    measure(load, servers[OURS], profile, settings),
                    round_no,
                )
        if then_ours is not None and OURS in servers:
            then_ours(servers[OURS])
        for name, sampler in samplers.items():
            _note_memory(bench, name, startups[name], sampler.stop())


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
    """Ours only, on a server of its own: see measure_sync."""
    with server:
        smoke_check(server.url, workload)
        db.reset(bench.settings.database_url)
        measure_sync(bench, server, load, workload, data_file)


def measure_sync(bench: BenchRun, server: Server, load: Load, workload: Workload, data_file: Path) -> None:
    """Ours only, on a running server: the feed polled with nothing new (next to a GET by id), and the
    event delay, idle and under the mixed load (taskbench/sync.py)."""
    settings = bench.settings
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
    dataset = db.DATASETS[settings.profile]
    db.ensure_database(url)
    schema = db.ensure_schema(url, app_env(settings, secret))
    log(f"schema via {schema}; seeding the {dataset.name} data set ({dataset.rows:,} tasks) if needed")
    started = time.monotonic()
    if db.ensure_seeded(url, dataset):
        log(f"seeded {dataset.rows:,} tasks in {time.monotonic() - started:.0f} s")
    return schema, db.load_fixtures(url, dataset)


def check_statements(
    settings: Settings, workload: Workload, ours_is_baseline: bool
) -> tuple[StatementCheck, str | None]:
    """Record on the wire what each server sends PostgreSQL per request (taskbench/sqlcheck.py) and
    compare (one worker each, pool through the recording proxy); on ours first, find the deep keyset
    page's cursor (None when the API has no keyset paging). Returns (check, cursor)."""
    host, port = sqlcheck.upstream(settings.database_url)
    deep_cursor: str | None = None
    with WireRecorder(host, port) as proxy:
        url = sqlcheck.via_proxy(settings.app_database_url, proxy.port)
        # One pooled connection each, so a few warm-up requests prepare every statement.
        pools = {"DATABASE_URL": url, "DB_POOL_SIZE": "1", "BASELINE_POOL_SIZE": "1"}
        traces = {}
        for name in (OURS, BASELINE):
            as_baseline = name == BASELINE or ours_is_baseline
            server = make_server(
                name, settings, workload, as_baseline=as_baseline, tag="sqlcheck", extra_env=pools, workers=1
            )
            with server:
                if name == OURS:
                    deep_cursor, note = deep_keyset_cursor(server.url, settings, workload)
                    log(f"keyset: {note}")
                traces[name] = sqlcheck.record(server.url, proxy, sqlcheck.requests(workload, deep_cursor))
    db.reset(settings.database_url)
    check = StatementCheck(ours=traces[OURS], baseline=traces[BASELINE], keyset_note=note)
    for line in check.differences():
        log(f"statements differ: {line}")
    return check, deep_cursor


def deep_keyset_cursor(base_url: str, settings: Settings, workload: Workload) -> tuple[str | None, str]:
    """The cursor of the 100,000-task user's page `keyset_pages` deep (limit 20), found by following
    `next_cursor` from the first page; (None, why) if the API has no keyset paging."""
    headers = {"Authorization": f"Bearer {workload.big_token}"}
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:
        page = client.get("/api/tasks", params={"limit": 20}).json()
        if "next_cursor" not in page:
            return None, "skipped: the API has no keyset paging (no next_cursor in GET /api/tasks)"
        log(f"keyset: following next_cursor {settings.keyset_pages - 1:,} times (limit 20)")
        seen, cursor = 20, None
        for _ in range(settings.keyset_pages - 1):
            cursor = page.get("next_cursor")
            if not cursor:
                return None, f"skipped: the 100,000-task user's list ended after {seen:,} tasks"
            r = client.get("/api/tasks", params={"limit": 20, "cursor": cursor})
            if r.status_code != 200:
                raise RuntimeError(f"keyset page: {r.status_code} {r.text[:200]}")
            page = r.json()
            seen += len(page["items"])
        if cursor is None or len(page["items"]) != 20:
            return None, f"skipped: page {settings.keyset_pages:,} is not a full page of 20"
        return cursor, f"page {settings.keyset_pages:,} by next_cursor (tasks {seen - 19:,}-{seen:,}), limit 20"


def main() -> int:
    settings = Settings.from_env()
    try:
        return run_bench(settings)
    finally:
        if settings.own_database:
            db.drop_database(settings.database_url)


def run_bench(settings: Settings) -> int:
    """The whole run (bench/README.md); the exit status."""
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
        users=fixtures.users,
    )
    bench.statements, deep_cursor = check_statements(settings, workload, ours_is_baseline)
    bench.keyset_note = bench.statements.keyset_note
    if bench.statements.differences() and not settings.allow_sql_drift:
        log(
            "the baseline does not send the app's statements: fix bench/baseline/asgi.py "
            "(BENCH_ALLOW_SQL_DRIFT=1 runs anyway)"
        )
        return 1
    scale = SCALE_PROFILES + ([KEYSET_PROFILE] if deep_cursor else [])
    with tempfile.TemporaryDirectory(prefix="taskbench-") as tmp:
        load = Load(wrk, settings.threads, settings.connections, Path(tmp) / "data.lua")
        write_lua_data(workload, load.data_file, deep_cursor=deep_cursor)
        for round_no in range(1, settings.rounds + 1):
            log(f"round {round_no}/{settings.rounds}")
            # The baseline has no MCP endpoint: the agent profiles run on ours only.
            agent = [] if ours_is_baseline else MCP_PROFILES
            servers = {name: server(name, f"r{round_no}") for name in (OURS, BASELINE)}
            sync = None
            if round_no == settings.rounds and not ours_is_baseline:

                def sync(ours: Server) -> None:
                    log("sync: the change feed and live events (ours only)")
                    measure_sync(bench, ours, load, workload, Path(tmp) / "sync.lua")

            run_paired_round(bench, round_no, servers, MAIN_PROFILES + scale, agent, load, workload, sync)
        if settings.soak > 0:
            run_soak(bench, server(OURS, "soak"), load, workload)
    bench.plans = db.explain_list_queries(settings.database_url)
    bench.counts_wrong = db.counts_differ(settings.database_url)

    report = render(bench)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    # `make bench-smoke` (CI) writes beside the published results, in an ignored folder.
    out_dir = RESULTS_DIR / "smoke" if settings.smoke else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "latest" if settings.profile == "standard" else f"latest-{settings.profile}"
    (out_dir / f"{stem}.md").write_text(report)
    (out_dir / f"{stem}.json").write_text(json.dumps(bench.to_json(), indent=2, default=str))
    print(report)
    failures = bench.hard_failures()
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
