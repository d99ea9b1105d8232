"""Bearer token verification -> the current user's id.

HS256 (a shared secret) and JWKS (Better Auth's asymmetric keys) can be active side by side. The
token's `alg` only picks which of the two configured paths to try; it is checked against an
allow-list, and a token is verified only with keys of its own kind, so an HS256 token "signed"
with a public key can never pass.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from starlette.types import Scope

from app.auth.jwks import JWKSClient, JWKSUnavailable
from app.columns import USER_ID_MAX, unstorable_reason
from app.config import Settings
from app.errors import ServiceUnavailable, Unauthorized

if TYPE_CHECKING:
    from app.metrics import Metrics
    from app.ratelimit import RateLimiter

logger = logging.getLogger("app.auth")

# Real tokens are well under 2 KB; refuse to parse megabytes of attacker input.
MAX_TOKEN_LENGTH = 8192
# Verified tokens remembered (until their `exp`) so a client's repeated calls skip the signature
# check; bounded, oldest first out. A frontend reuses one token for its 15 minutes.
VERIFIED_CACHE_SIZE = 4096
# The scope key under which BearerUser leaves the verified token's `exp` (Unix time).
TOKEN_EXPIRES_AT = "app.token_expires_at"  # noqa: S105 - a scope key, not a secret


class TokenVerifier:
    """Verifies bearer tokens according to the settings; one instance per app."""

    def __init__(self, settings: Settings, jwks: JWKSClient | None = None, *, metrics: Metrics | None = None) -> None:
        self._secret = settings.JWT_SECRET.get_secret_value().encode() if settings.JWT_SECRET else None
        self._hmac_algorithm = settings.JWT_ALGORITHM
        self._jwks = jwks
        self._asymmetric_algorithms = frozenset(settings.JWT_ALGORITHMS) if jwks else frozenset()
        self._issuer = settings.JWT_ISSUER
        self._audience = settings.JWT_AUDIENCE
        self._leeway = settings.JWT_LEEWAY
        # token -> (user id, exp, kid of the JWKS key that verified it, None for the shared secret)
        self._verified: dict[str, tuple[str, float, str | None]] = {}
        self._metrics = metrics

    def describe(self) -> str:
        """The active verification modes, for the startup log (no secrets)."""
        modes = []
        if self._secret:
            modes.append(f"{self._hmac_algorithm} shared secret")
        if self._jwks:
            modes.append(f"JWKS {self._jwks.url} ({', '.join(sorted(self._asymmetric_algorithms))})")
        return "; ".join(modes)

    async def user_id(self, token: str) -> str:
        """The verified token's user id (`sub`, else `user_id`); raises Unauthorized otherwise."""
        return (await self.identity(token))[0]

    async def identity(self, token: str) -> tuple[str, float]:
        """The verified token's user id and its expiry (`exp`, Unix time); raises Unauthorized otherwise."""
        cached = self._verified.get(token)
        if cached is not None:
            user_id, exp, kid = cached
            # A key withdrawn from the JWKS revokes its tokens, cached or not.
            if time.time() < exp and (kid is None or await self._still_published(kid)):
                if self._metrics is not None:
                    self._metrics.token_cache_hits.inc()
                return user_id, exp
            self._verified.pop(token, None)  # concurrent requests may have dropped it already
        if self._metrics is not None:
            self._metrics.token_cache_misses.inc()
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("The token is too large.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The token is malformed.") from None
        if "crit" in header:
            # RFC 7515 4.1.11: we understand no extensions, so a token that demands one is rejected.
            raise Unauthorized("The token uses unsupported critical header parameters.")
        algorithm = header.get("alg")
        key = await self._key_for(algorithm, header.get("kid"))
        claims = self._decode(token, key, str(algorithm))
        user_id = _subject(claims)
        self._remember(token, user_id, claims["exp"], None if key is self._secret else header.get("kid"))
        return user_id, float(claims["exp"])

    def remembers(self, token: str) -> bool:
        """True if `token` is in the verified-token cache (checking it again costs no signature check)."""
        return token in self._verified

    async def _still_published(self, kid: str) -> bool:
        assert self._jwks is not None  # a kid is only remembered for JWKS-verified tokens
        try:
            return await self._jwks.get_key(kid) is not None
        except JWKSUnavailable:
            return False

    def _remember(self, token: str, user_id: str, exp: Any, kid: str | None) -> None:
        if not isinstance(exp, int | float) or exp <= time.time():
            return  # accepted within the leeway only: verify again next time
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        # Without leeway: a cached token stops working exactly at its `exp`.
        self._verified[token] = (user_id, float(exp), kid)

    async def _key_for(self, algorithm: Any, kid: Any) -> Any:
        if not isinstance(algorithm, str):
            # An unhashable `alg` (a list, an object) would crash the allow-list lookup below.
            raise Unauthorized("The token's signing algorithm is not accepted.")
        if self._secret is not None and algorithm == self._hmac_algorithm:
            return self._secret
        if self._jwks is not None and algorithm in self._asymmetric_algorithms:
            if not isinstance(kid, str) or not kid or len(kid) > 256:
                raise Unauthorized("The token has no usable key id.")
            try:
                jwk = await self._jwks.get_key(kid)
            except JWKSUnavailable:
                raise ServiceUnavailable("The token's signing keys cannot be fetched right now.") from None
            if jwk is None:
                raise Unauthorized("The token is signed with an unknown key.")
            # A key published for one algorithm must not verify another; a key of the wrong type
            # (an RSA key for ES256) is rejected by PyJWT itself.
            if jwk.algorithm is not None and jwk.algorithm != algorithm:
                raise Unauthorized("The token's algorithm does not match its key.")
            return jwk.key
        raise Unauthorized("The token's signing algorithm is not accepted.")

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        required = ["exp", "iss"] if self._issuer is not None else ["exp"]
        options: jwt.types.Options = {"require": required, "verify_aud": self._audience is not None}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The token is not valid yet.") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise Unauthorized("The token was issued for another service.") from None
        except jwt.MissingRequiredClaimError:
            raise Unauthorized("The token lacks a required claim.") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("The token's signature is not valid.") from None
        return claims


def _subject(claims: dict[str, Any]) -> str:
    for name in ("sub", "user_id"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str) and value.strip() and len(value) <= USER_ID_MAX and unstorable_reason(value) is None:
            return value
        raise Unauthorized("The token's subject is not usable.")
    raise Unauthorized("The token has no subject.")


async def authenticate(scope: Scope, authorization: str, verifier: TokenVerifier, limiter: RateLimiter | None) -> str:
    """The id of the user a request's `Authorization` header value names, or Unauthorized.

    With rate limits on (app/ratelimit.py), a failed authentication counts against the client
    address's budget, and the request against the user's read or write budget: either may be a 429.
    The one authentication of every REST request (BearerUser and app/routers/hot.py call it).
    """
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    try:
        if scheme.lower() != "bearer" or not token:
            # RFC 6750 3.1: a request without credentials gets the challenge without an error code.
            raise Unauthorized("A bearer token is required.", error=None)
        if limiter is not None and not verifier.remembers(token):
            # An address over its failed-authentication budget gets no signature check.
            limiter.refuse_blocked_address(scope)
        user_id, expires_at = await verifier.identity(token)
    except Unauthorized:
        if limiter is not None:
            await limiter.authentication_failed(scope)
        raise
    if limiter is not None:
        await limiter.charge_request(scope, user_id)
    # Long-lived responses (the live events stream) end when the token does. In the scope rather
    # than request.state, which would build a State object on every request.
    scope[TOKEN_EXPIRES_AT] = expires_at
    return user_id


class BearerUser(HTTPBearer):
    """The security scheme (so OpenAPI documents it) and the dependency that yields the user id.

    One dependency instead of HTTPBearer plus a second one on top: each FastAPI dependency costs
    measurable time on every request.
    """

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        """The id of the user the request's bearer token was issued to (see `authenticate`)."""
        state = request.app.state
        return await authenticate(
            request.scope, request.headers.get("Authorization", ""), state.verifier, state.rate_limiter
        )


get_current_user = BearerUser(
    auto_error=False,
    scheme_name="BearerAuth",
    bearerFormat="JWT",
    description="A JWT from Better Auth (`/api/auth/token`) or signed with the shared `JWT_SECRET`.",
)
CurrentUser = Annotated[str, Depends(get_current_user)]
