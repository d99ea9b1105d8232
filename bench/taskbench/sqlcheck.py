"""Same statements, same transaction shape: recorded on the wire, compared, before anything is measured.

Each server (one worker, its pool through taskbench/pgwire.py's recording proxy) answers each kind of
request the profiles send a few times; the statements PostgreSQL receives for the last of them, with
BEGIN/COMMIT and the number of round trips, are that request's trace. The baseline must produce the
app's traces exactly (whitespace aside), so a change to the app's SQL cannot leave the baseline
doing less work unnoticed: the bench stops (BENCH_ALLOW_SQL_DRIFT=1 only reports it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from taskbench.pgwire import WireEvent, WireRecorder
from taskbench.workload import Workload

WARMUP = 4  # per request kind: every pooled connection has prepared its statements by then
RECORDED = 3


@dataclass(frozen=True)
class Trace:
    statements: tuple[str, ...]  # "BEGIN", "SELECT ...", ... in the order sent
    round_trips: int

    def render(self) -> str:
        lines = [f"{self.round_trips} round trip(s):"]
        lines += [f"  {sql}" for sql in self.statements]
        return "\n".join(lines)


def normalise(sql: str) -> str:
    """One space between tokens, no trailing semicolon."""
    return re.sub(r"\s+", " ", sql).strip().rstrip(";").strip()


def trace_of(events: list[WireEvent]) -> Trace:
    statements = tuple(normalise(e.sql) for e in events if e.kind in ("execute", "query"))
    trips = sum(1 for e in events if e.kind in ("sync", "query"))
    return Trace(statements, trips)


def via_proxy(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def upstream(url: str) -> tuple[str, int]:
    """The database's host and port in `url`."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


Request = Callable[[httpx.Client], httpx.Response]


def requests(workload: Workload, deep_cursor: str | None) -> dict[str, Request]:
    """The request kinds the profiles send, by name; each must answer 2xx."""
    user, task_id = workload.pairs[0]
    auth = {"Authorization": f"Bearer {workload.tokens[user]}"}
    big = {"Authorization": f"Bearer {workload.big_token}"}
    kinds: dict[str, Request] = {
        "list": lambda c: c.get("/api/tasks", params={"limit": 20}, headers=auth),
        "list status=completed": lambda c: c.get(
            "/api/tasks", params={"limit": 20, "status": "completed"}, headers=auth
        ),
        "get": lambda c: c.get(f"/api/tasks/{task_id}", headers=auth),
        "create": lambda c: c.post(
            "/api/tasks",
            json={
                "title": "sqlcheck",
                "description": "created by the statement check",
                "priority": "high",
            },
            headers=auth,
        ),
        "patch": lambda c: c.patch(f"/api/tasks/{task_id}", json={"status": "completed"}, headers=auth),
    }
    if deep_cursor is not None:
        kinds["list cursor=…"] = lambda c: c.get("/api/tasks", params={"limit": 20, "cursor": deep_cursor}, headers=big)
    return kinds


def record(base_url: str, proxy: WireRecorder, kinds: dict[str, Request]) -> dict[str, Trace]:
    """Each kind's steady-state trace (the most common of the recorded ones)."""
    traces: dict[str, Trace] = {}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for name, send in kinds.items():
            for _ in range(WARMUP):
                send(client)
            seen: list[Trace] = []
            for _ in range(RECORDED):
                mark = proxy.mark()
                r = send(client)
                if r.status_code >= 300:
                    raise RuntimeError(f"statement check, {name}: {r.status_code} {r.text[:200]}")
                seen.append(trace_of(proxy.since(mark)))
            traces[name] = Counter(seen).most_common(1)[0][0]
    return traces


def differences(ours: dict[str, Trace], baseline: dict[str, Trace]) -> list[str]:
    """What differs between the two servers' traces, one line per request kind; empty if nothing."""
    out = []
    for name, mine in ours.items():
        theirs = baseline.get(name)
        if theirs is None:
            out.append(f"{name}: the baseline was not checked")
        elif theirs != mine:
            out.append(f"{name}:\n ours {mine.render()}\n baseline {theirs.render()}")
    return out
