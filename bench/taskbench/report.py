"""Collected results and the markdown report (bench/results/latest.md)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import zip_longest
from statistics import median
from typing import Any

from taskbench import db
from taskbench.config import REPO_DIR, Settings
from taskbench.sqlcheck import Trace, differences
from taskbench.sync import PROBE_INTERVAL_S, PROBE_USERS, Delays
from taskbench.workload import (
    KEYSET_PROFILE,
    MAIN_PROFILES,
    MCP_PROFILES,
    SCALE_PROFILES,
    SYNC_PROFILES,
    Profile,
)
from taskbench.wrk import WrkResult

OURS, BASELINE = "ours", "baseline"

# The targets of issue 12 (`make bench`, paired medians, 2 workers, 100 connections).
MIN_RATIO = 0.5  # ours / baseline req/s, every main profile
MAX_P99_MS = 250.0
MAX_TAIL = 3.0  # p99 / p50
MAX_SCALE_SLOWDOWN = 1.5  # p50 of the 100,000-task user's page / the 100-task user's (or deep / first)
MAX_RSS_MIB = 150.0  # peak per worker
MAX_SOAK_GROWTH = 0.10  # RSS end / start - 1, per worker


@dataclass(frozen=True)
class StatementCheck:
    """What each server sent PostgreSQL per request kind (taskbench/sqlcheck.py)."""

    ours: dict[str, Trace]
    baseline: dict[str, Trace]
    keyset_note: str = ""  # how the deep keyset page was found, or why it was skipped

    def differences(self) -> list[str]:
        """One entry per request kind whose statements, transaction shape or round trips differ."""
        return differences(self.ours, self.baseline)


@dataclass
class Memory:
    startup_kib: list[int] = field(default_factory=list)  # per worker, first session
    peak_kib: list[int] = field(default_factory=list)  # per worker, max over sessions

    def add_peak(self, peaks: list[int]) -> None:
        pairs = zip_longest(self.peak_kib, peaks, fillvalue=0)
        self.peak_kib = [max(a, b) for a, b in pairs]


@dataclass
class Soak:
    seconds: int
    rss_start_kib: list[int]
    rss_end_kib: list[int]
    result: WrkResult


@dataclass
class SyncRun:
    """Ours only: the feed's idle poll next to a GET by id, and event delays idle and under load."""

    runs: dict[str, WrkResult]
    idle: Delays
    loaded: Delays
    mixed: WrkResult


@dataclass
class BenchRun:
    settings: Settings
    ours_cmd: str
    baseline_cmd: str
    ours_is_baseline: bool
    schema: str
    pg_version: str
    wrk_version: str
    users: int = 1_000
    runs: dict[str, dict[str, list[WrkResult]]] = field(default_factory=dict)
    # server -> profile -> round -> result: ratios pair the two servers' runs of one round.
    by_round: dict[str, dict[str, dict[int, WrkResult]]] = field(default_factory=dict)
    statements: StatementCheck | None = None
    keyset_note: str = ""
    counts_wrong: int = 0
    memory: dict[str, Memory] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    soak: Soak | None = None
    sync: SyncRun | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Other work on the box skews every number; record it so a noisy run shows.
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])

    def add(self, server: str, profile: str, result: WrkResult, round_no: int = 0) -> None:
        self.runs.setdefault(server, {}).setdefault(profile, []).append(result)
        self.by_round.setdefault(server, {}).setdefault(profile, {})[round_no] = result

    def ratios(self, profile: str) -> list[float]:
        """ours / baseline req/s of each round both servers ran `profile` in."""
        ours = self.by_round.get(OURS, {}).get(profile, {})
        base = self.by_round.get(BASELINE, {}).get(profile, {})
        return [ours[r].rps / base[r].rps for r in sorted(ours.keys() & base.keys()) if base[r].rps > 0]

    def errors(self) -> int:
        """non-2xx + socket errors over every measured run."""
        results = [r for profiles in self.runs.values() for rs in profiles.values() for r in rs]
        if self.sync is not None:
            results += [*self.sync.runs.values(), self.sync.mixed]
        if self.soak is not None:
            results.append(self.soak.result)
        return sum(r.non_2xx + r.socket_errors for r in results)

    def hard_failures(self) -> list[str]:
        """What makes the run fail whatever the profile: errors, statements that drifted, wrong counts."""
        out = []
        if errors := self.errors():
            out.append(f"{errors} non-2xx responses or socket errors (see the tables)")
        if self.statements is not None and self.statements.differences():
            out.append("the baseline's statements differ from the app's (see 'Statements per request')")
        if self.counts_wrong:
            out.append(f"task_counts disagrees with tasks for {self.counts_wrong} group(s) after the run")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.started.isoformat(),
            "ours_is_baseline": self.ours_is_baseline,
            "load_before": self.load_before,
            "settings": self.settings.__dict__,
            "runs": {
                s: {p: [r.to_json() for r in rs] for p, rs in profiles.items()} for s, profiles in self.runs.items()
            },
            "commit": git_commit(),
            "profile": self.settings.profile,
            "ratios": {p.name: self.ratios(p.name) for p in MAIN_PROFILES + SCALE_PROFILES + [KEYSET_PROFILE]},
            "statements": None
            if self.statements is None
            else {
                server: {name: {"statements": t.statements, "round_trips": t.round_trips} for name, t in traces.items()}
                for server, traces in (
                    (OURS, self.statements.ours),
                    (BASELINE, self.statements.baseline),
                )
            },
            "keyset": self.keyset_note,
            "task_counts_wrong": self.counts_wrong,
            "targets": [t.__dict__ for t in targets(self)],
            "memory": {s: m.__dict__ for s, m in self.memory.items()},
            "soak": None if self.soak is None else {**self.soak.__dict__, "result": self.soak.result.to_json()},
            "sync": None
            if self.sync is None
            else {
                "runs": {name: r.to_json() for name, r in self.sync.runs.items()},
                "event_delay_idle_s": self.sync.idle.seconds,
                "event_delay_loaded_s": self.sync.loaded.seconds,
                "event_after_answer_idle_s": self.sync.idle.after_answer,
                "event_after_answer_loaded_s": self.sync.loaded.after_answer,
                "mixed": self.sync.mixed.to_json(),
            },
        }


def git_commit() -> str:
    """HEAD's full hash, and whether the working tree had changes (results written by runs aside)."""

    def git(*args: str) -> str:
        # Not strip(): `git status --porcelain` lines start with a space when only the worktree changed.
        return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True).stdout.rstrip("\n")

    head = git("rev-parse", "HEAD") or "no commit yet"
    # Results the runs write, and a worktree's .venv link to a shared venv, are not changes to the code.
    changed = [
        line
        for line in git("status", "--porcelain").splitlines()
        if not line[3:].startswith("bench/results/") and line[3:] != ".venv"
    ]
    return f"{head} (dirty tree: {len(changed)} changed file(s))" if changed else f"{head} (clean tree)"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _mem_gib() -> float:
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])  # MemTotal
    return kib / 1024 / 1024


def _fmt_mib(kib: list[int]) -> str:
    return " / ".join(f"{k / 1024:.0f}" for k in kib) or "n/a"


def _median(rs: list[WrkResult], attr: str) -> float:
    return median(float(getattr(r, attr)) for r in rs)


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _errors(rs: list[WrkResult]) -> int:
    return sum(r.non_2xx + r.socket_errors for r in rs)


def _table(run: BenchRun, profiles: list[Profile]) -> list[str]:
    """One row per profile: both servers' medians, the paired ratio (median of per-round ratios, with
    min-max), p50/p99 median (min-max over rounds), p99/p50 and errors."""
    lines = [
        "| profile | ours req/s | baseline req/s | ours / baseline: median (min-max) | ours p50 ms | ours p99 ms "
        "| ours p99/p50 | baseline p50 ms | baseline p99 ms | errors ours / baseline |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for profile in profiles:
        ours = run.runs.get(OURS, {}).get(profile.name)
        base = run.runs.get(BASELINE, {}).get(profile.name)
        if not ours or not base:
            continue
        ratios = run.ratios(profile.name)
        p50 = _median(ours, "p50_ms")
        tail = _median(ours, "p99_ms") / p50 if p50 else float("inf")
        lines.append(
            f"| {profile.label} | {_median(ours, 'rps'):,.0f} | {_median(base, 'rps'):,.0f} | "
            f"**{_spread(ratios, '{:.2f}')}** | {_spread([r.p50_ms for r in ours])} | "
            f"{_spread([r.p99_ms for r in ours])} | {tail:.1f} | {_spread([r.p50_ms for r in base])} | "
            f"{_spread([r.p99_ms for r in base])} | {_errors(ours)} / {_errors(base)} |"
        )
    return lines


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    passed: bool | None  # None: not measured in this run


def targets(run: BenchRun) -> list[Target]:
    """Issue 12's targets, each with what this run measured."""
    out: list[Target] = []
    ours = run.runs.get(OURS, {})
    for profile in MAIN_PROFILES:
        rs, ratios = ours.get(profile.name), run.ratios(profile.name)
        if not rs:
            out.append(Target(f"{profile.name}: measured", "not run", None))
            continue
        p50, p99 = _median(rs, "p50_ms"), _median(rs, "p99_ms")
        if ratios:
            ratio = median(ratios)
            out.append(
                Target(
                    f"{profile.name}: ours/baseline >= {MIN_RATIO}",
                    f"{ratio:.2f}",
                    ratio >= MIN_RATIO,
                )
            )
        out.append(Target(f"{profile.name}: 0 errors", str(_errors(rs)), _errors(rs) == 0))
        out.append(
            Target(
                f"{profile.name}: p99 <= {MAX_P99_MS:.0f} ms",
                f"{p99:.1f} ms",
                p99 <= MAX_P99_MS,
            )
        )
        out.append(
            Target(
                f"{profile.name}: p99 <= {MAX_TAIL:.0f}x p50",
                f"{p99 / p50:.1f}x",
                p99 <= MAX_TAIL * p50,
            )
        )
    pairs = [
        ("first page: 100,000-task user p50 <= 1.5x the 100-task user's", "list_big", "list_small"),
        ("status=completed: 100,000-task user p50 <= 1.5x the 100-task user's",
         "list_big_completed", "list_small_completed"),
        ("keyset page deep in p50 <= 1.5x the first page", KEYSET_PROFILE.name, "list_big"),
    ]  # fmt: skip
    for what, slow, fast in pairs:
        if ours.get(slow) and ours.get(fast):
            factor = _median(ours[slow], "p50_ms") / _median(ours[fast], "p50_ms")
            out.append(Target(what, f"{factor:.2f}x", factor <= MAX_SCALE_SLOWDOWN))
        else:
            out.append(
                Target(
                    what,
                    run.keyset_note if slow == KEYSET_PROFILE.name else "not run",
                    None,
                )
            )
    if memory := run.memory.get(OURS):
        peak = max(memory.peak_kib, default=0) / 1024
        out.append(
            Target(
                f"peak RSS per worker < {MAX_RSS_MIB:.0f} MiB",
                f"{peak:.0f} MiB",
                peak < MAX_RSS_MIB,
            )
        )
    if run.soak is not None:
        growth = max(
            (
                end / start - 1
                for start, end in zip(run.soak.rss_start_kib, run.soak.rss_end_kib, strict=False)
                if start
            ),
            default=0.0,
        )
        out.append(
            Target(
                f"soak: RSS per worker grows <= {MAX_SOAK_GROWTH:.0%}",
                f"{growth:+.1%}",
                growth <= MAX_SOAK_GROWTH,
            )
        )
    else:
        out.append(Target("soak stays flat", "not run (SOAK=300)", None))
    return out


def _targets_section(run: BenchRun) -> list[str]:
    lines = ["| target | measured | result |", "|---|--:|---|"]
    for t in targets(run):
        verdict = "-" if t.passed is None else ("PASS" if t.passed else "**FAIL**")
        lines.append(f"| {t.what} | {t.measured} | {verdict} |")
    return lines


def _statements_section(check: StatementCheck) -> list[str]:
    lines = [
        "Recorded on the wire (taskbench/pgwire.py: a proxy between each server and PostgreSQL, one worker, "
        "after a warm-up), per request kind: the statements PostgreSQL received, in order, and the round trips "
        "the server waited for.",
        "",
    ]
    drift = check.differences()
    lines.append(
        "**The baseline's statements DIFFER from the app's:**" if drift else "The baseline sends exactly these too."
    )
    lines.append("")
    for name, trace in check.ours.items():
        lines += [f"{name}:", "", "```", trace.render(), "```", ""]
    for line in drift:
        lines += ["```", line, "```", ""]
    return lines


def _mcp_table(run: BenchRun) -> list[str]:
    """Ours only (the baseline has no MCP door), next to ours' GET /api/tasks?limit=20."""
    ours = run.runs.get(OURS, {})
    rest = ours.get("list")
    if not rest or not any(ours.get(p.name) for p in MCP_PROFILES):
        return []
    lines = [
        "| profile | req/s (median) | req/s per round | p50 ms | p99 ms | non-2xx | socket errors "
        "| vs GET /api/tasks |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for profile in [MAIN_PROFILES[0], *MCP_PROFILES]:
        rs = ours.get(profile.name)
        if not rs:
            continue
        ratio = _median(rs, "rps") / _median(rest, "rps")
        per_round = ", ".join(f"{r.rps:,.0f}" for r in rs)
        lines.append(
            f"| {profile.label} | {_median(rs, 'rps'):,.0f} | {per_round} | {_median(rs, 'p50_ms'):.1f} | "
            f"{_median(rs, 'p99_ms'):.1f} | {sum(r.non_2xx for r in rs)} | {sum(r.socket_errors for r in rs)} | "
            f"{ratio:.2f} |"
        )
    return lines


def _delay_row(label: str, delays: Delays) -> str:
    values = (
        median(delays.seconds),
        delays.percentile(0.99),
        max(delays.seconds),
        median(delays.after_answer),
    )
    ms = [f"{value * 1000:.0f}" for value in values]
    return f"| {label} | {len(delays.seconds)} | {' | '.join(ms)} | {delays.missed} |"


def _sync_section(sync: SyncRun) -> list[str]:
    lines = [
        "## Keeping clients in sync (ours only)",
        "",
        "| profile | req/s | p50 ms | p99 ms | non-2xx | socket errors |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for profile in SYNC_PROFILES:
        r = sync.runs.get(profile.name)
        if r is not None:
            lines.append(
                f"| {profile.label} | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
                f"{r.non_2xx} | {r.socket_errors} |"
            )
    lines += [
        "",
        f"Event delay: {PROBE_USERS} users with one open `GET /api/tasks/events` stream each; every "
        f"{PROBE_INTERVAL_S * 1000:.0f} ms one of them PATCHes a task; delay = from sending the PATCH to "
        "its event arriving on the stream (an upper bound on the delay from the commit).",
        "",
        "| while | events | p50 ms | p99 ms | max ms | median ms after the PATCH's answer | missed (> 5 s) |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for label, delays in (
        ("idle", sync.idle),
        (f"mixed load ({sync.mixed.rps:,.0f} req/s)", sync.loaded),
    ):
        if delays.seconds:
            lines.append(_delay_row(label, delays))
        else:
            lines.append(f"| {label} | 0 | - | - | - | - | {delays.summary()} |")
    return lines


def render(run: BenchRun) -> str:
    s = run.settings
    uname = platform.uname()
    out = [
        f"# Task API benchmark ({s.profile})",
        "",
        f"- Date: {run.started:%Y-%m-%d %H:%M} UTC; commit {git_commit()}",
        f"- Machine: {socket.gethostname()}, {_cpu_model()} x {os.cpu_count()} cores, "
        f"{_mem_gib():.1f} GiB RAM, Linux {uname.release}",
        f"- Software: Python {sys.version.split()[0]}, PostgreSQL {run.pg_version}, "
        f"{run.wrk_version}; schema by {run.schema}",
        f"- 1-min load average before the run: {run.load_before:.2f} "
        "(well above 0 means other work was competing for the CPUs)",
        f"- Load: wrk {s.threads} threads, {s.connections} connections, {s.duration} s "
        f"per run after a {s.warmup} s warm-up; {s.rounds} round(s); in each round both servers are up and "
        "each profile runs on one, then at once on the other (who goes first alternates by round and "
        "profile); ratio = median of the per-round ours/baseline ratios (min-max in brackets); p50/p99 = "
        "median over rounds (min-max); errors summed over rounds",
        f"- Ours: `{run.ours_cmd}`",
        f"- Baseline: raw ASGI `bench/baseline/asgi.py`, same workers, "
        f"asyncpg pool {s.baseline_pool_size}/worker: `{run.baseline_cmd}`",
        f"- Data: {run.users:,} users x 100 tasks (tokens and task ids rotated per request) + one user with "
        f"{db.DATASETS[s.profile].big_tasks:,} tasks + one 100-task user never written to",
        "- Both servers verify HS256 tokens with PyJWT the same way and cache verified tokens the same way "
        "(4,096 tokens, until `exp`), write one JSON access-log line per request to stderr (the server log "
        "file), and send PostgreSQL the same statements (checked below)",
    ]
    if s.smoke:
        out += [
            "",
            "> **Smoke run (`make bench-smoke`): tiny data and runs; no target applies except zero errors.**",
        ]
    if run.ours_is_baseline:
        out += [
            "",
            "> **backend/app/main.py not found: 'ours' is the baseline run twice (pipeline check, not a result).**",
        ]
    heading = "## Targets (issue 12)" if not s.smoke else "## Targets (issue 12; a smoke run's numbers mean nothing)"
    out += ["", heading, "", *_targets_section(run)]
    out += ["", "## Throughput and latency", "", *_table(run, MAIN_PROFILES)]
    if mcp := _mcp_table(run):
        out += [
            "",
            "## Agent tools: `find_tasks` over MCP vs `GET /api/tasks` (ours)",
            "",
            *mcp,
        ]
        out += [
            "",
            "The same first page of 20 tasks for a rotating user, as a `tools/call` on `POST /mcp` (JSON-RPC, "
            "structured content and a text summary); non-2xx does not count tool errors (HTTP 200), which the "
            "pre-flight check rules out.",
        ]
    out += ["", "## Large vs small user (`GET /api/tasks?limit=20`)", ""]
    out += [
        *_table(run, [*SCALE_PROFILES, KEYSET_PROFILE]),
        "",
        f"Deep keyset page: {run.keyset_note}",
    ]
    if run.statements is not None:
        out += [
            "",
            "## Statements per request",
            "",
            *_statements_section(run.statements),
        ]
    out += [
        "",
        f"task_counts after the run: {run.counts_wrong} group(s) differ from the real counts",
    ]
    out += ["", "## Worker memory (RSS, MiB per worker)", ""]
    out += ["| server | after start-up | peak during runs |", "|---|--:|--:|"]
    for name, mem in run.memory.items():
        out.append(f"| {name} | {_fmt_mib(mem.startup_kib)} | {_fmt_mib(mem.peak_kib)} |")
    if run.soak:
        k = run.soak
        out += [
            "",
            f"## Soak: ours, mixed profile for {k.seconds} s",
            "",
            "| req/s | p99 ms | non-2xx | socket errors | RSS start MiB | RSS end MiB |",
            "|--:|--:|--:|--:|--:|--:|",
            f"| {k.result.rps:,.0f} | {k.result.p99_ms:.1f} | {k.result.non_2xx} | "
            f"{k.result.socket_errors} | {_fmt_mib(k.rss_start_kib)} | "
            f"{_fmt_mib(k.rss_end_kib)} |",
        ]
    if run.sync:
        out += ["", *_sync_section(run.sync)]
    out += ["", "## EXPLAIN of the list queries (100,000-task user)", ""]
    for name, plan in run.plans.items():
        used = "uses an index" if "Index" in plan else "**NO INDEX USED**"
        out += [f"{name} ({used}):", "", "```", plan, "```", ""]
    out += [
        "non-2xx = responses with status >= 400 as counted by wrk; socket errors = "
        "connect + read + write + timeout. Rows written by a run are deleted "
        "(and the table vacuumed) before the next run.",
    ]
    return "\n".join(out) + "\n"
