"""CPU instructions per rate limit check against Redis, with N checks in flight at once (callgrind).

    .venv/bin/python backend/scripts/ratelimit_instructions.py --backend backend \\
        --redis-url redis://127.0.0.1:6391/0 [--concurrency 1,10,50]

Needs valgrind and gcc (scripts/instructions.py builds the callgrind client requests) and a Redis
of your own at --redis-url (the checks write `LIMITS:` keys for fresh users there).

For each concurrency N: `RateLimiter.charge(user, "read")` from the given backend directory, N
users each charging in a loop (so up to N hits share a batch), on a budget nothing exceeds; after a
warm-up, instructions are counted over 500 and over 2,500 checks, per check = (count(2,500) -
count(500)) / 2,000, so fixed costs cancel out. The storage bound is stretched to 10 s (valgrind
runs code ~50 times slower); a run in which any check failed open is refused, not reported.
Instructions in the Redis server and in the kernel are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from instructions import CGCTL, totals  # noqa: E402  (the sibling script's helpers)

N1, N2 = 500, 2500


def child(backend: Path, url: str, concurrency: int, event_loop: str) -> None:
    """Run the checks under callgrind (the parent started it), dumping counts after N1 and N2."""
    cg = ctypes.CDLL(str(CGCTL))
    cg.cg_dump.argtypes = [ctypes.c_char_p]
    sys.path.insert(0, str(backend))
    from app import ratelimit
    from tests.support.apps import make_settings

    ratelimit.STORAGE_TIMEOUT_S = 10.0
    failures: list[Exception] = []
    storage_failed = ratelimit.RateLimiter._storage_failed

    def count_failure(self: ratelimit.RateLimiter, exc: Exception, unchecked: int = 1) -> None:
        failures.append(exc)
        storage_failed(self, exc, unchecked)

    ratelimit.RateLimiter._storage_failed = count_failure  # type: ignore[method-assign]
    settings = make_settings(
        "sqlite:///unused.db",
        RATE_LIMIT_ENABLED=True,
        RATE_LIMIT_READ="100000000/hour",
        RATE_LIMIT_STORAGE_URL=url,
    )

    async def main() -> None:
        limiter = ratelimit.RateLimiter(settings)
        users = [f"instr-{uuid.uuid4().hex[:8]}-{index}" for index in range(concurrency)]

        async def checks(user: str, count: int) -> None:
            for _ in range(count):
                await limiter.charge(user, "read")

        async def run(total: int) -> None:
            await asyncio.gather(*(checks(user, total // concurrency) for user in users))

        await run(200)
        cg.cg_start()
        for count in (N1, N2):
            cg.cg_zero()
            await run(count)
            cg.cg_dump(str(count).encode())
        cg.cg_stop()
        await limiter.aclose()

    if event_loop == "uvloop":  # what app.serve runs on
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    if failures:
        raise SystemExit(f"{len(failures)} checks failed open ({type(failures[0]).__name__}): counts not valid")


def main() -> None:
    """Measure each concurrency in turn and print instructions per check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, type=Path)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loop")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    backend = args.backend.resolve()
    if args.child is not None:
        child(backend, args.redis_url, args.child, args.loop)
        return
    if not CGCTL.exists():
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(CGCTL), str(HERE / "cgctl.c")], check=True)
    for concurrency in (int(part) for part in args.concurrency.split(",")):
        with tempfile.TemporaryDirectory(prefix="ratelimit-instructions-") as out:
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.out"]
            command += [f"--log-file={out}/valgrind.txt"]  # the child's own errors still reach stderr
            command += [sys.executable, __file__, "--backend", str(backend), "--redis-url", args.redis_url]
            command += ["--loop", args.loop, "--child", str(concurrency)]
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            subprocess.run(command, cwd=backend, env=env, check=True)
            found = totals(Path(out))
        per_check = (found[str(N2)] - found[str(N1)]) / (N2 - N1)
        print(f"{args.loop} concurrency {concurrency:3d}: {per_check / 1e3:6.0f} k instructions per check")


if __name__ == "__main__":
    main()
