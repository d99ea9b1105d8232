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

from taskbench.config import REPO_DIR, Settings
from taskbench.sync import PROBE_INTERVAL_S, PROBE_USERS, Delays
from taskbench.workload import MAIN_PROFILES, MCP_PROFILES, SCALE_PROFILES, SYNC_PROFILES, Profile
from taskbench.wrk import WrkResult

OURS, BASELINE = "ours", "baseline"


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
    runs: dict[str, dict[str, list[WrkResult]]] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    soak: Soak | None = None
    sync: SyncRun | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Other work on the box skews every number; record it so a noisy run shows.
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])

    def add(self, server: str, profile: str, result: WrkResult) -> None:
        self.runs.setdefault(server, {}).setdefault(profile, []).append(result)

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.started.isoformat(),
            "ours_is_baseline": self.ours_is_baseline,
            "load_before": self.load_before,
            "settings": self.settings.__dict__,
            "runs": {
                s: {p: [r.to_json() for r in rs] for p, rs in profiles.items()} for s, profiles in self.runs.items()
            },
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


def _git_commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "no commit yet"


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


def _row(profile: Profile, server: str, rs: list[WrkResult], ratio: str) -> str:
    per_round = ", ".join(f"{r.rps:,.0f}" for r in rs)
    return (
        f"| {profile.label} | {server} | {_median(rs, 'rps'):,.0f} | {per_round} | "
        f"{_median(rs, 'p50_ms'):.1f} | {_median(rs, 'p99_ms'):.1f} | "
        f"{sum(r.non_2xx for r in rs)} | {sum(r.socket_errors for r in rs)} | {ratio} |"
    )


def _table(run: BenchRun, profiles: list[Profile]) -> list[str]:
    lines = [
        "| profile | server | req/s (median) | req/s per round | p50 ms | p99 ms "
        "| non-2xx | socket errors | ours / baseline |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for profile in profiles:
        ours = run.runs.get(OURS, {}).get(profile.name)
        base = run.runs.get(BASELINE, {}).get(profile.name)
        if not ours or not base:
            continue
        ratio = _median(ours, "rps") / _median(base, "rps")
        lines.append(_row(profile, OURS, ours, f"**{ratio:.2f}**"))
        lines.append(_row(profile, BASELINE, base, ""))
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


def _scale_summary(run: BenchRun) -> list[str]:
    lines = []
    for server in (OURS, BASELINE):
        r = run.runs.get(server, {})
        pairs = [("first page", "list_big", "list_small"),
                 ("status=completed", "list_big_completed", "list_small_completed")]  # fmt: skip
        for label, big, small in pairs:
            if r.get(big) and r.get(small):
                slow = _median(r[small], "rps") / _median(r[big], "rps")
                lines.append(f"- {server}, {label}: 100-task user is {slow:.1f}x the req/s of the 100,000-task user")
    return lines


def _delay_row(label: str, delays: Delays) -> str:
    values = (median(delays.seconds), delays.percentile(0.99), max(delays.seconds), median(delays.after_answer))
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
    for label, delays in (("idle", sync.idle), (f"mixed load ({sync.mixed.rps:,.0f} req/s)", sync.loaded)):
        if delays.seconds:
            lines.append(_delay_row(label, delays))
        else:
            lines.append(f"| {label} | 0 | - | - | - | - | {delays.summary()} |")
    return lines


def render(run: BenchRun) -> str:
    s = run.settings
    uname = platform.uname()
    out = [
        "# Task API benchmark",
        "",
        f"- Date: {run.started:%Y-%m-%d %H:%M} UTC; commit {_git_commit()}",
        f"- Machine: {socket.gethostname()}, {_cpu_model()} x {os.cpu_count()} cores, "
        f"{_mem_gib():.1f} GiB RAM, Linux {uname.release}",
        f"- Software: Python {sys.version.split()[0]}, PostgreSQL {run.pg_version}, "
        f"{run.wrk_version}; schema by {run.schema}",
        f"- 1-min load average before the run: {run.load_before:.2f} "
        "(well above 0 means other work was competing for the CPUs)",
        f"- Load: wrk {s.threads} threads, {s.connections} connections, {s.duration} s "
        f"per run after a {s.warmup} s warm-up; {s.rounds} round(s) alternating "
        "ours/baseline (medians; errors summed over rounds)",
        f"- Ours: `{run.ours_cmd}`",
        f"- Baseline: raw ASGI `bench/baseline/asgi.py`, same workers, "
        f"asyncpg pool {s.baseline_pool_size}/worker: `{run.baseline_cmd}`",
        "- Data: 1,000 users x 100 tasks (tokens and task ids rotated per request) + one user with 100,000 tasks",
    ]
    if run.ours_is_baseline:
        out += [
            "",
            "> **backend/app/main.py not found: 'ours' is the baseline run twice (pipeline check, not a result).**",
        ]
    out += ["", "## Throughput and latency", "", *_table(run, MAIN_PROFILES)]
    if mcp := _mcp_table(run):
        out += ["", "## Agent tools: `find_tasks` over MCP vs `GET /api/tasks` (ours)", "", *mcp]
        out += [
            "",
            "The same first page of 20 tasks for a rotating user, as a `tools/call` on `POST /mcp` (JSON-RPC, "
            "structured content and a text summary); non-2xx does not count tool errors (HTTP 200), which the "
            "pre-flight check rules out.",
        ]
    out += ["", "## Large vs small user (`GET /api/tasks?limit=20`)", ""]
    out += [*_table(run, SCALE_PROFILES), "", *_scale_summary(run)]
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
