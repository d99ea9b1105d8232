"""Rate limits: a read and a write budget per user, and a budget of failed authentications per
client address (README "Operating it").

- **Who.** A user is the verified token's subject (`CurrentUser`), never anything the client
  states. Failed authentications (401) count per client address: the ASGI client, which uvicorn
  takes from `X-Forwarded-For` only when the peer is in FORWARDED_ALLOW_IPS; IPv6 addresses count
  per /64, the block one client usually holds. While an address is over that budget its requests
  are refused before any signature check, except tokens already in the verified-token cache.
- **What.** REST requests count by method: GET/HEAD/OPTIONS against the read budget, the others
  against the write budget. Other callers count their operations with `count_operation` (below):
  an MCP tool call as the REST operation it performs, opening an event stream as a read.
- **How.** `limits`' moving window (at most `q` requests in any `w` seconds) in its in-memory
  storage (per worker process) or in Redis (one budget for every worker and replica). A 429 says
  when the budget frees up again; the refusal is also remembered in the process until then, so a
  client hammering past its limit costs no storage round trips.
- **Redis, one round trip for many requests.** The hits of the requests that reach the check in
  the same event-loop turn go to Redis together: one EVALSHA of a script that runs `limits`' own
  moving-window script (its text, verbatim) once per hit, on `limits`' keys, and answers for each
  hit either "counted" or the entry that blocks it, from which the 429's `Retry-After` follows
  without a second call. Each hit is counted exactly as `limits` counts it. The call goes through
  app/redisclient.py, a client of our own for exactly this (one pipelined connection per
  process, RESP2 written and parsed directly): through redis-py's asyncio client a call cost the
  worker several times what the rest of the limit check does.
- **Headers**, as in draft-ietf-httpapi-ratelimit-headers-11: every response to a counted request
  carries `RateLimit-Policy: "read";q=1200;w=60`; a 429 adds `RateLimit: "read";r=0;t=12` and
  `Retry-After: 12`, after which a retry fits. `RateLimit` is left off successful responses: the
  remaining quota would cost a second storage round trip per request (section 6.2 of the draft
  allows servers to send it only near exhaustion).
- **Failing open.** Redis unreachable, refusing (an error reply) or slower than 100 ms (for the
  round trip a request's hit goes in, connecting included): the request is served unchecked, the
  metrics count it, one warning a minute is logged, and the storage is tried again after a second
  (on a new connection: a call that failed closes the one it was on).
  A rate limit never turns a request into a 5xx.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.storage.redis.bridge import RedisBridge
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import Scope

from app.errors import RateLimited
from app.redisclient import ReplyError, ScriptRunner, bulk

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from app.config import Settings
    from app.metrics import Metrics

logger = logging.getLogger("app.ratelimit")

Operation = Literal["read", "write"]
# The ASGI scope key under which a counted request's success headers wait for the response
# (app/middleware.py adds them to it).
RATE_LIMIT_HEADERS = "app.rate_limit_headers"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AUTH_FAILURES = "auth-failures"
# A storage call (Redis) slower than this is abandoned and the request served unchecked.
STORAGE_TIMEOUT_S = 0.1
# After a storage failure, requests skip the storage this long (one slow call, not one per request).
STORAGE_RETRY_S = 1.0
WARNING_INTERVAL_S = 60.0
# Refusals remembered per process (user or address -> when their budget frees up).
MAX_REMEMBERED_REFUSALS = 10_000


@dataclass(frozen=True)
class Policy:
    """One budget: its name in the headers, its rate, and its RateLimit-Policy field value."""

    name: str
    item: RateLimitItem
    field: str
    # The limit and the window length as arguments of `limits`' Redis script (encoded once).
    redis_args: bytes
    # What comes before and after a user's (or address's) key in the Redis key of their window.
    key_head: str
    key_tail: str

    @classmethod
    def parse(cls, name: str, rate: str) -> Policy:
        """The policy `name` for a `limits` rate string such as `1200/minute`."""
        item = parse(rate)
        redis_args = bulk(b"%d" % item.amount) + bulk(b"%d" % item.get_expiry())
        # `limits`' own key with a placeholder for the key: its layout, built once, not per request.
        placeholder = "\0"
        head, _, tail = f"{RedisStorage.PREFIX}:{item.key_for(name, placeholder)}".partition(placeholder)
        return cls(name, item, f'"{name}";q={item.amount};w={item.get_expiry()}', redis_args, head, tail)

    def redis_key(self, key: str) -> str:
        """The Redis key of `key`'s window: the one `limits`' RedisStorage would use."""
        return self.key_head + key + self.key_tail

    def refusal(self, detail: str, reset_at: float) -> RateLimited:
        """The 429 for a request over this budget, which frees up at `reset_at` (epoch seconds)."""
        # Whole seconds, rounded up and then some: a retry after Retry-After always fits.
        wait = max(1, math.floor(reset_at - time.time()) + 1)
        return RateLimited(
            f"{detail} ({self.item.amount} per {self.item.get_expiry()} s); retry after {wait} s.",
            retry_after=wait,
            policy=self.field,
            limit=f'"{self.name}";r=0;t={wait}',
        )


class RateLimiter:
    """The app's rate limits (one instance per app, in `app.state.rate_limiter` while it runs)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.policies: dict[str, Policy] = {
            "read": Policy.parse("read", settings.RATE_LIMIT_READ),
            "write": Policy.parse("write", settings.RATE_LIMIT_WRITE),
            AUTH_FAILURES: Policy.parse(AUTH_FAILURES, settings.RATE_LIMIT_AUTH_FAILURES),
        }
        self._success_headers = {
            name: ((b"ratelimit-policy", policy.field.encode()),) for name, policy in self.policies.items()
        }
        url = settings.RATE_LIMIT_STORAGE_URL.get_secret_value()
        self.storage_kind = url.partition("://")[0]
        self._strategy = MovingWindowRateLimiter(MemoryStorage())
        self._redis = None if self.storage_kind == "memory" else RedisWindows(url)
        self._metrics = metrics
        self._refused: dict[tuple[str, str], float] = {}
        self._storage_retry_at = 0.0
        self._storage_down = False
        self._next_warning = 0.0

    def describe(self) -> str:
        """The limits and the storage kind, for the startup log (no URL: it may hold a password)."""
        rates = ", ".join(f"{name} {policy.field}" for name, policy in self.policies.items())
        return f"{rates}; storage {self.storage_kind}"

    async def charge(self, user_id: str, operation: Operation, *, cost: int = 1) -> None:
        """Count `cost` operations against `user_id`'s `operation` budget; RateLimited when over it."""
        policy = self.policies[operation]
        reset_at = await self._over(policy, user_id, cost)
        if reset_at is not None:
            raise self._refuse(policy, f"Too many {operation}s", reset_at)

    async def charge_request(self, scope: Scope, user_id: str) -> None:
        """Count a REST request of `user_id` as a read or a write by its method (see `charge`)."""
        operation: Operation = "read" if scope["method"] in READ_METHODS else "write"
        await self.charge(user_id, operation)
        scope[RATE_LIMIT_HEADERS] = self._success_headers[operation]

    def refuse_blocked_address(self, scope: Scope) -> None:
        """RateLimited if the client's address is known to be over its failed-authentication budget.

        Local and cheap (no storage call): it is asked before every signature check.
        """
        reset_at = self._refused.get((AUTH_FAILURES, client_address(scope)))
        if reset_at is not None and reset_at > time.time():
            raise self._refuse(self.policies[AUTH_FAILURES], _AUTH_DETAIL, reset_at)

    async def authentication_failed(self, scope: Scope) -> None:
        """Count a failed authentication of the client's address; RateLimited when over the budget."""
        policy = self.policies[AUTH_FAILURES]
        reset_at = await self._over(policy, client_address(scope), 1)
        if reset_at is not None:
            raise self._refuse(policy, _AUTH_DETAIL, reset_at)

    async def aclose(self) -> None:
        """Close the Redis connections, if any."""
        if self._redis is not None:
            await self._redis.aclose()

    def _refuse(self, policy: Policy, detail: str, reset_at: float) -> RateLimited:
        if self._metrics is not None:
            self._metrics.rate_limited.labels(policy.name).inc()
        return policy.refusal(detail, reset_at)

    async def _over(self, policy: Policy, key: str, cost: int) -> float | None:
        """None if `cost` fits in `key`'s budget (and is counted), else when the budget frees up."""
        slot = (policy.name, key)
        reset_at = self._refused.get(slot)
        if reset_at is not None:
            if reset_at > time.time():
                return reset_at
            del self._refused[slot]
        if self._storage_retry_at and time.monotonic() < self._storage_retry_at:
            self._unchecked()
            return None
        try:
            if self._redis is None:
                reset_at = await self._hit(policy, key, cost)
            else:
                reset_at = await self._redis.hit(policy, key, cost)
        except Exception as exc:  # fail open: whatever the storage does, the request is served
            self._storage_failed(exc)
            return None
        if self._storage_down:
            self._storage_down = False
            logger.info("rate limit storage available again")
        if reset_at is not None:
            self._remember_refusal(slot, reset_at)
        return reset_at

    async def _hit(self, policy: Policy, key: str, cost: int) -> float | None:
        """The in-memory storage's answer (see `_over`)."""
        if await self._strategy.hit(policy.item, policy.name, key, cost=cost):
            return None
        # Full: the oldest request in the window leaves it at `reset_time`.
        stats = await self._strategy.get_window_stats(policy.item, policy.name, key)
        return stats.reset_time

    def _remember_refusal(self, slot: tuple[str, str], reset_at: float) -> None:
        if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
            now = time.time()
            self._refused = {k: v for k, v in self._refused.items() if v > now}
            if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
                del self._refused[next(iter(self._refused))]
        self._refused[slot] = reset_at

    def _storage_failed(self, exc: Exception) -> None:
        self._storage_down = True
        self._storage_retry_at = time.monotonic() + STORAGE_RETRY_S
        if self._metrics is not None:
            self._metrics.ratelimit_storage_errors.inc()
        self._unchecked()
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARNING_INTERVAL_S
            # The class name only: messages can carry the host and port.
            logger.warning(
                "rate limit storage unavailable (%s): serving requests without rate limits until it answers",
                type(exc).__name__,
            )

    def _unchecked(self) -> None:
        if self._metrics is not None:
            self._metrics.ratelimit_unchecked.inc()


_AUTH_DETAIL = "Too many failed authentications from this address"


# `limits`' moving-window script (acquire_moving_window.lua: its KEYS[1] is the window, its ARGV
# the time, the limit, the window length and the cost; true when the cost fits and is counted),
# run once per hit of a batch. Per hit the answer is 0 if counted, else the window's entry that
# has to leave it before the cost fits (the oldest one when the cost exceeds the limit), or the
# time sent if the window is empty.
_BATCH_SCRIPT = f"""
local function acquire(KEYS, ARGV)
{RedisBridge.SCRIPT_ACQUIRE_MOVING_WINDOW.decode()}
end
local now = ARGV[1]
local results = {{}}
for i, key in ipairs(KEYS) do
    local limit, expiry, amount = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
    if acquire({{key}}, {{now, limit, expiry, amount}}) then
        results[i] = 0
    else
        local index = tonumber(limit) - tonumber(amount)
        if index < 0 then index = -1 end
        results[i] = redis.call('lindex', key, index) or now
    end
end
return results
"""

# One pending hit: its window's key, the policy, the cost, and the future its request awaits.
_Hit = tuple[str, Policy, int, "asyncio.Future[float | None]"]
# `cost` as the script's argument, for the usual costs (saves formatting it per hit).
_COSTS = {cost: bulk(b"%d" % cost) for cost in range(1, 17)}


class RedisWindows:
    """`limits`' moving windows in Redis, with the hits of concurrent requests in one round trip.

    A request's hit waits in a queue until the event loop's next turn; then the queue goes to
    Redis as one script call (`_BATCH_SCRIPT`, through app/redisclient.py: one pipelined
    connection) while later hits start the next queue. A failed or slow (over 100 ms) call fails
    every hit it carried.
    """

    def __init__(self, url: str, timeout: float | None = None) -> None:
        # STORAGE_TIMEOUT_S read now, not at import: scripts/instructions.py stretches it under valgrind.
        self._runner = ScriptRunner(url, _BATCH_SCRIPT, STORAGE_TIMEOUT_S if timeout is None else timeout)
        self._queue: list[_Hit] = []

    def hit(self, policy: Policy, key: str, cost: int) -> asyncio.Future[float | None]:
        """Count `cost` against `key`'s `policy` window: resolves to None if it fits (and is
        counted), else to when the window frees up enough for it (epoch seconds).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float | None] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._send)
        self._queue.append((policy.redis_key(key), policy, cost, future))
        return future

    async def aclose(self) -> None:
        """Wait for the calls on their way (at most their timeout), then close the connection."""
        if self._queue:
            await asyncio.sleep(0)  # the queued hits go out first (`_send` is due this turn)
        await self._runner.aclose()

    def _send(self) -> None:
        hits, self._queue = self._queue, []
        try:
            # KEYS: the windows; ARGV: the time, then limit, expiry and cost per hit.
            keys: list[bytes] = []
            args = [bulk(repr(time.time()).encode())]
            for key, policy, cost, _ in hits:
                keys.append(bulk(key.encode()))
                args.append(policy.redis_args)
                args.append(_COSTS.get(cost) or bulk(b"%d" % cost))
            body = b"".join(keys + args)
            self._runner.run(len(hits), body, 4 * len(hits) + 1, lambda reply: self._answer(hits, reply))
        except Exception as exc:  # never leave a request waiting
            self._answer(hits, exc)

    @staticmethod
    def _answer(hits: list[_Hit], reply: object) -> None:
        if isinstance(reply, list) and len(reply) == len(hits):
            for (_, policy, _, future), answer in zip(hits, reply, strict=True):
                if future.done():  # a cancelled request's hit still counts
                    continue
                if answer == 0:
                    future.set_result(None)
                elif isinstance(answer, bytes | int):
                    future.set_result(float(answer) + policy.item.get_expiry())
                else:
                    future.set_exception(ReplyError(f"unexpected answer {answer!r}"))
            return
        exc = reply if isinstance(reply, Exception) else ReplyError(f"unexpected reply {reply!r:.100}")
        for *_, future in hits:
            if not future.done():
                future.set_exception(exc)


def client_address(scope: Scope) -> str:
    """The client's address for the failed-authentication budget: the ASGI client (behind trusted
    proxies, uvicorn's proxy_headers put the forwarded address there), an IPv6 address as its /64.
    """
    client = scope.get("client")
    host: str = client[0] if client else ""
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False))
        except ValueError:
            pass
    return host or "unknown"


async def count_operation(app: Starlette, user_id: str, operation: Operation, *, cost: int = 1) -> None:
    """Count an operation of `user_id` against their read or write budget, as a REST request is.

    For callers that are not REST routes with `CurrentUser` (which counts every request itself): an
    MCP tool call counts as the REST operation it performs (list/get a task: "read"; create, update,
    delete: "write"), opening an event stream as one "read". `app` is the API's app (the one whose
    lifespan ran: for a mounted sub-app, the parent). Does nothing when rate limits are off.

    Raises RateLimited (a 429 Problem; `.detail`, and `.headers` with Retry-After, RateLimit-Policy
    and RateLimit) when the budget is used up; never fails because the storage is unavailable.
    """
    limiter: RateLimiter | None = getattr(app.state, "rate_limiter", None)
    if limiter is not None:
        await limiter.charge(user_id, operation, cost=cost)
