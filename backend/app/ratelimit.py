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
- **How.** `limits`' moving window (at most `q` requests in any `w` seconds) in memory (per worker
  process; `MemoryWindows`) or in Redis (one budget for every worker and replica). A 429 says
  when the budget frees up again; the refusal is also remembered in the process until then, so a
  client hammering past its limit costs no storage round trips.
- **Redis, one round trip for many requests.** Hits go to Redis in batches: one EVALSHA of a
  script that runs `limits`' own moving-window script (its text, verbatim) once per hit, on
  `limits`' keys, and answers for each hit "counted" (saying whether the window still has plenty
  of room) or the entry that blocks it, from which the 429's `Retry-After` follows without a
  second call. A request whose hit has to ask waits for the next batch, sent on the event loop's
  next turn. While Redis says a user's window has plenty of room, the worker admits up to 4 of
  their requests at a time itself and sends those hits within 20 ms, to be counted all the same
  (`RedisWindows` states the bound on what that lets through). This takes the round trip off
  most requests: a round trip's system calls cost more than the rest of the check. The call goes through
  app/redisclient.py, a client of our own for exactly this (one pipelined connection per
  process, RESP2 written and parsed directly): through redis-py's asyncio client a call cost the
  worker several times what the rest of the limit check does.
- **Headers**, as in draft-ietf-httpapi-ratelimit-headers-11: every response to a counted request
  carries `RateLimit-Policy: "read";q=1200;w=60`; a 429 adds `RateLimit: "read";r=0;t=12` and
  `Retry-After: 12`, after which a retry fits. `RateLimit` is left off successful responses: the
  remaining quota would cost a second storage round trip per request (section 6.2 of the draft
  allows servers to send it only near exhaustion).
- **Failing open.** Redis unreachable, refusing (an error reply) or slower than 100 ms (for the
  round trip a request's hit goes in, connecting included): the request is served unchecked (so
  were the ones the worker admitted whose hits went in that call), the
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.bridge import RedisBridge
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
    # The room a window needs for the worker to admit hits itself (`_BATCH_SCRIPT`'s far_at,
    # encoded; 0: never), and how long Redis' "there is that room" holds (RedisWindows).
    redis_far_at: bytes
    allowance_trust_s: float

    @classmethod
    def parse(cls, name: str, rate: str) -> Policy:
        """The policy `name` for a `limits` rate string such as `1200/minute`."""
        item = parse(rate)
        redis_args = bulk(b"%d" % item.amount) + bulk(b"%d" % item.get_expiry())
        # `limits`' own key with a placeholder for the key: its layout, built once, not per request.
        placeholder = "\0"
        head, _, tail = f"{RedisStorage.PREFIX}:{item.key_for(name, placeholder)}".partition(placeholder)
        far_at = max(4 * ALLOWANCE_HITS, item.amount // ALLOWANCE_ROOM_SHARE)
        return cls(
            name,
            item,
            f'"{name}";q={item.amount};w={item.get_expiry()}',
            redis_args,
            head,
            tail,
            bulk(b"%d" % (far_at if far_at < item.amount else 0)),
            min(ALLOWANCE_TRUST_S, item.get_expiry() / 4),
        )

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
        self._memory = MemoryWindows()
        self._redis = None if self.storage_kind == "memory" else RedisWindows(url, on_failure=self._storage_failed)
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
        if self._redis is not None and self._redis.admit(policy, key, cost):
            return None
        try:
            if self._redis is None:
                reset_at = self._memory.hit(policy, key, cost)
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

    def _remember_refusal(self, slot: tuple[str, str], reset_at: float) -> None:
        if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
            now = time.time()
            self._refused = {k: v for k, v in self._refused.items() if v > now}
            if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
                del self._refused[next(iter(self._refused))]
        self._refused[slot] = reset_at

    def _storage_failed(self, exc: Exception, unchecked: int = 1) -> None:
        """A storage call failed: `unchecked` requests go unchecked (one asking, or the ones a
        worker admitted itself, RedisWindows.admit, whose hits it carried).
        """
        self._storage_down = True
        self._storage_retry_at = time.monotonic() + STORAGE_RETRY_S
        if self._metrics is not None:
            self._metrics.ratelimit_storage_errors.inc()
        self._unchecked(unchecked)
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARNING_INTERVAL_S
            # The class name only: messages can carry the host and port.
            logger.warning(
                "rate limit storage unavailable (%s): serving requests without rate limits until it answers",
                type(exc).__name__,
            )

    def _unchecked(self, count: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.ratelimit_unchecked.inc(count)


_AUTH_DETAIL = "Too many failed authentications from this address"


class MemoryWindows:
    """`limits`' moving windows kept in this process: what `limits`' moving-window script does in
    Redis, on a deque of entry times per window (newest first, at most `limit` of them).

    Not `limits`' own in-memory storage: after each hit its asyncio variant re-scans every window
    it holds, with a thread hop per window (on the benchmark's mixed profile, with 2,000 windows:
    +15% CPU per request and a p99 of 580 ms), and its threaded variant scans them all every 10 ms.
    Here a window is only looked at when it is hit, and windows idle for longer than their length
    are dropped every 10,000 hits, so memory follows the users active in the last window.
    """

    SWEEP_EVERY = 10_000

    def __init__(self) -> None:
        # Per policy name: its window length, and the window of each key (user or address).
        self._windows: dict[str, tuple[int, dict[str, deque[float]]]] = {}
        self._hits_to_sweep = self.SWEEP_EVERY

    def hit(self, policy: Policy, key: str, cost: int) -> float | None:
        """None if `cost` fits in `key`'s `policy` window (and is counted), else when the window
        frees up enough for it (epoch seconds): the answer `_BATCH_SCRIPT` gives in Redis.
        """
        self._hits_to_sweep -= 1
        if not self._hits_to_sweep:
            self._sweep()
        now = time.time()
        limit: int = policy.item.amount
        expiry: int = policy.item.get_expiry()
        windows = self._windows.get(policy.name)
        if windows is None:
            windows = self._windows[policy.name] = (expiry, {})
        window = windows[1].get(key)
        if window is None:
            window = windows[1][key] = deque(maxlen=limit)
        if cost > limit:  # never fits: the answer is when the oldest entry leaves
            return (window[-1] if window else now) + expiry
        if len(window) > limit - cost and window[limit - cost] >= now - expiry:
            return window[limit - cost] + expiry
        window.extendleft([now] * cost)
        return None

    def _sweep(self) -> None:
        self._hits_to_sweep = self.SWEEP_EVERY
        now = time.time()
        for expiry, windows in self._windows.values():
            for key in [key for key, window in windows.items() if not window or window[0] < now - expiry]:
                del windows[key]


# `limits`' moving-window script (acquire_moving_window.lua: its KEYS[1] is the window, its ARGV
# the time, the limit, the window length and the cost; true when the cost fits and is counted),
# run once per asked hit of a batch. A hit the worker admitted itself (`admitted` = 1, within its
# allowance) is recorded as that script records a hit that fits, whatever the window holds. Per
# hit the answer is:
# - 1: counted, and the window still has room for at least `far_at` more (the entry at index
#   `limit - far_at` is absent or has left the window): the worker may admit a few of this key's
#   hits itself until told otherwise;
# - 0: counted, and the window is nearer full than that (or `far_at` is 0: never);
# - a string: not counted (over the limit); the window's entry that has to leave it before the
#   cost fits (the oldest one when the cost exceeds the limit), or the time sent if it is empty.
_BATCH_SCRIPT = f"""
local function acquire(KEYS, ARGV)
{RedisBridge.SCRIPT_ACQUIRE_MOVING_WINDOW.decode()}
end
local now = ARGV[1]
local results = {{}}
for i, key in ipairs(KEYS) do
    local limit, expiry, amount = ARGV[5 * i - 3], ARGV[5 * i - 2], ARGV[5 * i - 1]
    local far_at, admitted = tonumber(ARGV[5 * i]), ARGV[5 * i + 1] == '1'
    local counted, length = admitted, nil
    if admitted then
        for _ = 1, tonumber(amount) do length = redis.call('lpush', key, now) end
        if length > tonumber(limit) then redis.call('ltrim', key, 0, tonumber(limit) - 1) end
        redis.call('expire', key, expiry)
    else
        counted = acquire({{key}}, {{now, limit, expiry, amount}})
    end
    if counted then
        results[i] = 0
        if far_at > 0 then
            local at = tonumber(limit) - far_at
            -- A list no longer than `at` has no entry there (the usual case: no call needed).
            local entry = (length == nil or length > at) and redis.call('lindex', key, at)
            if not entry or tonumber(entry) < tonumber(now) - tonumber(expiry) then results[i] = 1 end
        end
    else
        local index = tonumber(limit) - tonumber(amount)
        if index < 0 then index = -1 end
        results[i] = redis.call('lindex', key, index) or now
    end
end
return results
"""

# How many hits of one key a worker may admit itself before Redis has counted them (an allowance).
ALLOWANCE_HITS = 4
# Hits a worker admitted itself wait at most this long to be sent to Redis together.
ALLOWANCE_FLUSH_S = 0.02
# A window must have room for this share of its limit (and for at least 4 * ALLOWANCE_HITS hits)
# for the worker to admit hits itself; nearer the limit every hit waits for Redis.
ALLOWANCE_ROOM_SHARE = 4
# How long a "plenty of room" answer holds: a quarter of the window, at most this.
ALLOWANCE_TRUST_S = 15.0
# Keys with an allowance remembered per process.
MAX_ALLOWANCES = 100_000

# One pending hit: its window's key, the policy, the cost, and the future its request awaits
# (None: a hit the worker admitted itself, sent to be counted).
_Hit = tuple[str, Policy, int, "asyncio.Future[float | None] | None"]
# The script's arguments for the usual costs and for "admitted" (saves formatting them per hit).
_COSTS = {cost: bulk(b"%d" % cost) for cost in range(1, 17)}
_ASKED, _ADMITTED = bulk(b"0"), bulk(b"1")


class _Allowance:
    """A key's allowance in this worker: until when it holds, and its hits not yet counted."""

    __slots__ = ("uncounted", "until")

    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic(); 0: none now (every hit asks Redis)
        self.uncounted = 0


class RedisWindows:
    """`limits`' moving windows in Redis, with the hits of many requests in one round trip.

    A hit either asks (`hit`: its request waits for the answer; the queue goes out on the event
    loop's next turn) or is admitted by the worker itself (`admit`: the request goes on at once; the
    hit goes out with the next call, within 20 ms). The worker admits a key's hits itself only while
    Redis' last answer for that key (at most a quarter of the window ago, at most 15 s) said the
    window has room for a quarter of the limit more (and at least 16), and only 4 of them at a time
    before Redis has counted them. Every admitted hit is counted in Redis like any other (from when
    it reaches Redis). So a user gets more than the limit only by using a quarter of it or more in
    the time a worker takes to hear back from Redis (a burst of concurrent requests, or requests
    spread over processes), and then by at most 4 requests per worker: the admitted hits on their
    way are at most 4, and the first answer after the window is full ends the allowance.
    Allowances are kept for at most MAX_ALLOWANCES keys per worker; beyond that, new keys ask.

    Calls go through app/redisclient.py (one pipelined connection). A failed or slow (over 100 ms)
    call fails every hit it carried: the asked ones raise, the admitted ones are reported to
    `on_failure` (with how many were not counted), and every allowance ends.
    """

    def __init__(
        self,
        url: str,
        timeout: float | None = None,
        on_failure: Callable[[Exception, int], None] | None = None,
    ) -> None:
        # STORAGE_TIMEOUT_S read now, not at import: scripts/instructions.py stretches it under valgrind.
        self._runner = ScriptRunner(url, _BATCH_SCRIPT, STORAGE_TIMEOUT_S if timeout is None else timeout)
        self._on_failure = on_failure
        self._queue: list[_Hit] = []
        self._send_soon = False  # a send is due on the loop's next turn
        self._send_later: asyncio.TimerHandle | None = None  # a send is due within ALLOWANCE_FLUSH_S
        self._allowances: dict[str, _Allowance] = {}
        self._next_sweep = 0.0  # when `_room_for_allowance` may drop idle allowances again

    def admit(self, policy: Policy, key: str, cost: int) -> bool:
        """True if the worker admits `cost` against `key`'s `policy` window itself, under its
        allowance (the hit is sent to Redis to be counted, soon); False if the hit has to ask.
        """
        window = policy.redis_key(key)
        allowance = self._allowances.get(window)
        if allowance is None or allowance.uncounted + cost > ALLOWANCE_HITS or allowance.until < time.monotonic():
            return False
        allowance.uncounted += cost
        self._queue.append((window, policy, cost, None))
        if not self._send_soon and self._send_later is None:
            self._send_later = asyncio.get_running_loop().call_later(ALLOWANCE_FLUSH_S, self._send)
        return True

    def hit(self, policy: Policy, key: str, cost: int) -> asyncio.Future[float | None]:
        """Count `cost` against `key`'s `policy` window: resolves to None if it fits (and is
        counted), else to when the window frees up enough for it (epoch seconds).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float | None] = loop.create_future()
        if not self._send_soon:
            self._send_soon = True
            loop.call_soon(self._send)
        self._queue.append((policy.redis_key(key), policy, cost, future))
        return future

    async def aclose(self) -> None:
        """Send the hits waiting to go, wait for the calls on their way (at most their timeout),
        then close the connection.
        """
        if self._queue:
            self._send()
        await self._runner.aclose()

    def _send(self) -> None:
        self._send_soon = False
        if self._send_later is not None:
            self._send_later.cancel()
            self._send_later = None
        hits, self._queue = self._queue, []
        if not hits:
            return
        try:
            # KEYS: the windows; ARGV: the time, then limit, expiry, cost, far_at and admitted per hit.
            keys: list[bytes] = []
            args = [bulk(repr(time.time()).encode())]
            for key, policy, cost, future in hits:
                keys.append(bulk(key.encode()))
                args.append(policy.redis_args)
                args.append(_COSTS.get(cost) or bulk(b"%d" % cost))
                args.append(policy.redis_far_at)
                args.append(_ASKED if future is not None else _ADMITTED)
            body = b"".join(keys + args)
            self._runner.run(len(hits), body, 6 * len(hits) + 1, lambda reply: self._answer(hits, reply))
        except Exception as exc:  # never leave a request waiting
            self._answer(hits, exc)

    def _answer(self, hits: list[_Hit], reply: object) -> None:
        if not (isinstance(reply, list) and len(reply) == len(hits)):
            self._failed(
                hits, reply if isinstance(reply, Exception) else ReplyError(f"unexpected reply {reply!r:.100}")
            )
            return
        allowances = self._allowances
        now = time.monotonic()
        for (key, policy, cost, future), answer in zip(hits, reply, strict=True):
            allowance = allowances.get(key)
            if future is None and allowance is not None:
                # Never below 0: after a failure, an allowance can be newer than the hits it hears of.
                allowance.uncounted = max(0, allowance.uncounted - cost)
            if answer == 1:
                if allowance is None and self._room_for_allowance(now):
                    allowance = allowances[key] = _Allowance()
                if allowance is not None:  # else: no room, this key's hits keep asking
                    allowance.until = now + policy.allowance_trust_s
            elif allowance is not None:
                allowance.until = 0.0
            if future is None or future.done():  # a cancelled request's hit still counts
                continue
            if answer == 0 or answer == 1:
                future.set_result(None)
            elif isinstance(answer, bytes):
                future.set_result(float(answer) + policy.item.get_expiry())
            else:
                future.set_exception(ReplyError(f"unexpected answer {answer!r}"))

    def _failed(self, hits: list[_Hit], exc: Exception) -> None:
        self._allowances.clear()  # nothing is known now: every hit asks until Redis answers again
        uncounted = 0
        for *_, future in hits:
            if future is None:
                uncounted += 1
            elif not future.done():
                future.set_exception(exc)
        if uncounted and self._on_failure is not None:
            self._on_failure(exc, uncounted)

    def _room_for_allowance(self, now: float) -> bool:
        """Whether one more allowance fits in MAX_ALLOWANCES, after dropping the idle ones (at
        most once a second: with every allowance in use, each new key would re-scan them all).
        """
        allowances = self._allowances
        if len(allowances) < MAX_ALLOWANCES:
            return True
        if now < self._next_sweep:
            return False
        self._next_sweep = now + 1.0
        idle = [key for key, allowance in allowances.items() if allowance.uncounted <= 0 and allowance.until <= now]
        for key in idle:
            del allowances[key]
        return len(allowances) < MAX_ALLOWANCES


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
