"""An async, cached JWKS client for Better Auth's `/api/auth/jwks` (or any JWKS URL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import jwt

if TYPE_CHECKING:
    from app.metrics import Metrics

logger = logging.getLogger("app.auth")


@dataclass(frozen=True)
class SigningKey:
    """A public key from the set, and the algorithm it is published for (if the JWK names one)."""

    key: Any
    algorithm: str | None


class JWKSUnavailable(Exception):
    """No key set could be fetched and none is cached."""


class JWKSClient:
    """Keys by `kid`, fetched without blocking the event loop.

    An unknown `kid` refetches at most once per `min_refetch_interval` (one fetch in flight at a
    time), so a flood of made-up kids cannot make us hammer the auth server. The last good key set
    stays in use while the auth server is down.
    """

    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient | None = None,
        max_age: float = 600.0,
        min_refetch_interval: float = 10.0,
        timeout: float = 3.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.url = url
        self._metrics = metrics
        self._http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._owns_http = http is None
        self._max_age = max_age
        self._min_refetch_interval = min_refetch_interval
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at = float("-inf")  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    async def get_key(self, kid: str) -> SigningKey | None:
        """The key for `kid`, refetching the set when stale or when the kid is new; None if unknown."""
        key = self._keys.get(kid)
        if key is None:
            await self._refresh()  # a new kid (rotation) or the first use: this request must wait
            return self._keys.get(kid)
        # Known key, old set: answer now, refresh in the background (a withdrawn key then stops
        # working), so a slow auth server never stalls requests whose keys we already hold.
        stale = self._fetched_at is not None and time.monotonic() - self._fetched_at > self._max_age
        if stale and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self._refresh_quietly())
        return key

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(JWKSUnavailable):
            await self._refresh()

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._attempted_at < self._min_refetch_interval:
                if self._fetched_at is None:
                    raise JWKSUnavailable("no key set available")
                return
            self._attempted_at = time.monotonic()
            if self._metrics is not None:
                self._metrics.jwks_fetches.inc()
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                logger.warning("JWKS fetch failed: %s", type(exc).__name__)
                if self._metrics is not None:
                    self._metrics.jwks_fetch_failures.inc()
                if self._fetched_at is None:
                    raise JWKSUnavailable("no key set available") from None
                return  # keep the last good key set
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _fetch(self) -> dict[str, SigningKey]:
        response = await self._http.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document: Any = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK set")
        keys: dict[str, SigningKey] = {}
        for entry in document["keys"]:
            usable = isinstance(entry, dict) and isinstance(entry.get("kid"), str) and entry.get("use", "sig") == "sig"
            if not usable:
                continue
            try:
                key = jwt.PyJWK(entry).key
            except (jwt.PyJWTError, TypeError, ValueError):
                # PyJWK raises TypeError for some malformed members (e.g. `"alg": [...]`); one bad
                # entry must not take the whole key set down with it.
                logger.warning("skipping unusable JWK (kty=%s)", entry.get("kty"))
                continue
            algorithm = entry.get("alg")
            keys[entry["kid"]] = SigningKey(key, algorithm if isinstance(algorithm, str) else None)
        if not keys:
            raise ValueError("JWK set has no usable signing keys")
        return keys

    async def aclose(self) -> None:
        """Stop a background refresh and close the HTTP client if we created it."""
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if self._owns_http:
            await self._http.aclose()
