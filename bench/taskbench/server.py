"""Starting/stopping the server under test and reading its workers' RSS."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from taskbench.config import VENV_BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name; ppid is the second.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    tree, out, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(tree.get(pid, []))
    return out


def listens(root: int, port: int) -> bool:
    """True if a process in `root`'s tree holds the socket listening on 127.0.0.1/0.0.0.0:`port`.

    On a shared machine a port found free can be taken by someone else's server before ours binds
    it; a /health answer from that server must not pass for ours.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for pid in _descendants(root):
        try:
            fds = list((Path("/proc") / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return True
            except OSError:
                continue
    return False


def worker_pids(root: int) -> list[int]:
    """Leaf processes under the server: the workers for uvicorn --workers N
    (and for gunicorn or a shell wrapper), or the server itself when N=1."""
    tree = _children()
    leaves, stack = [], [root]
    while stack:
        pid = stack.pop()
        kids = tree.get(pid, [])
        if not kids and pid != root:
            leaves.append(pid)
        stack.extend(kids)
    # multiprocessing may start a helper that serves no requests.
    workers = [p for p in leaves if "resource_tracker" not in _cmdline(p)]
    return sorted(workers) or [root]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak, tracked by the kernel) in KiB."""
    out: dict[str, int] = {}
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


@dataclass
class RssSampler:
    """Polls the workers' VmRSS in the background; VmHWM backs it up."""

    pids: list[int]
    interval: float = 0.5
    peak_kib: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[int, int]:
        now = {pid: memory_kib(pid).get("VmRSS", 0) for pid in self.pids}
        for pid, kib in now.items():
            self.peak_kib[pid] = max(self.peak_kib.get(pid, 0), kib)
        return now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict[int, int]:
        """Stop sampling; returns the peak per worker (KiB)."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()
        for pid in self.pids:
            hwm = memory_kib(pid).get("VmHWM", 0)
            self.peak_kib[pid] = max(self.peak_kib.get(pid, 0), hwm)
        return dict(self.peak_kib)


@dataclass
class Server:
    name: str
    app: str  # ASGI import string
    cwd: Path
    env: dict[str, str]
    serve_cmd: str
    workers: int
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _format(self, port: object) -> str:
        return self.serve_cmd.format(venv=VENV_BIN.parent, app=self.app, port=port, workers=self.workers)

    @property
    def command(self) -> list[str]:
        return shlex.split(self._format(self.port))

    def describe(self) -> str:
        return f"cd {self.cwd} && {self._format('$PORT')}"

    def __enter__(self) -> Server:
        self.port = free_port()  # chosen as late as possible: others start servers on this machine too
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # Own session/process group, so stop() can signal exactly this tree.
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env={**os.environ, **self.env, "WEB_CONCURRENCY": str(self.workers)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    if not listens(self.proc.pid, self.port):
                        raise RuntimeError(f"{self.name}: port {self.port} is answered by another process")
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            hint = ""
            if self.log_path.read_text(errors="replace").count("died") >= 2:
                # uvicorn kills a worker not ready within its worker health-check timeout (5 s by
                # default), then starts another: on a CPU-starved machine none ever gets ready.
                hint = (
                    " (uvicorn keeps killing workers not ready in time: the machine is too busy; try WEB_CONCURRENCY=1)"
                )
            raise RuntimeError(f"{self.name}: /health not 200 in {timeout}s{hint}; see {self.log_path}")
        # /health may be answered by the first worker while others still boot.
        while time.monotonic() < deadline and len(self.worker_pids()) < self.workers:
            time.sleep(0.2)
        time.sleep(1.0)  # let every worker finish its lifespan startup

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return worker_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # Stragglers of this group only (workers that outlived the master).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
