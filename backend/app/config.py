"""Settings read once from the environment (and an optional `.env` at the repository root)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.dburl import DatabaseURLError, engine_spec
from app.redisclient import parse_url as parse_redis_url

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SQLITE_URL = f"sqlite:///{REPO_ROOT / 'backend' / 'data' / 'tasks.db'}"

HmacAlgorithm = Literal["HS256", "HS384", "HS512"]
AsymmetricAlgorithm = Literal["EdDSA", "ES256", "ES512", "RS256", "PS256"]
# Better Auth's jwt plugin can sign with any of these; a stock setup needs only JWT_JWKS_URL.
BETTER_AUTH_ALGORITHMS: tuple[AsymmetricAlgorithm, ...] = ("EdDSA", "ES256", "ES512", "RS256", "PS256")
RATE_LIMIT_STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DatabaseSettings(BaseSettings):
    """The database knobs alone: all that migrations need."""

    model_config = SettingsConfigDict(
        # ENV_FILE points at another dotenv file (or /dev/null for none).
        env_file=os.environ.get("ENV_FILE", REPO_ROOT / ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    DATABASE_URL: SecretStr = SecretStr(DEFAULT_SQLITE_URL)
    # Optional direct (non-pooled) URL for migrations when DATABASE_URL is a PgBouncer/Neon pooler URL.
    DATABASE_URL_DIRECT: SecretStr | None = None
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=200)
    # Overflow connections are opened and closed under load (connection churn, TLS handshakes):
    # off by default; requests queue fairly for the pool instead.
    DB_MAX_OVERFLOW: int = Field(default=0, ge=0, le=200)
    # Seconds to wait for a pooled connection or a new connection before answering 503.
    DB_CONNECT_TIMEOUT: float = Field(default=3.0, gt=0, le=60)
    # Longest a single statement may run (a search over huge texts); over it the request gets 422.
    DB_STATEMENT_TIMEOUT_MS: int = Field(default=5000, ge=100, le=600_000)
    # Database slots one user may hold at once; the rest of the pool always serves everyone else.
    DB_MAX_SLOTS_PER_USER: int = Field(default=4, ge=1, le=200)

    @field_validator("DATABASE_URL", "DATABASE_URL_DIRECT")
    @classmethod
    def _usable_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                engine_spec(value.get_secret_value(), connect_timeout=1.0)
            except DatabaseURLError as exc:
                raise ValueError(str(exc)) from None
        return value

    def migration_url(self) -> str:
        """The URL migrations run on: the direct one when the app itself goes through a pooler."""
        return (self.DATABASE_URL_DIRECT or self.DATABASE_URL).get_secret_value()


class Settings(DatabaseSettings):
    """Every knob of the service. Field names are the environment variable names."""

    JWT_SECRET: SecretStr | None = None
    JWT_ALGORITHM: HmacAlgorithm = "HS256"
    JWT_JWKS_URL: str | None = None
    JWT_ALGORITHMS: Annotated[list[AsymmetricAlgorithm], NoDecode] = Field(
        default_factory=lambda: list(BETTER_AUTH_ALGORITHMS), min_length=1
    )
    # An unknown `kid` refetches the JWKS at most this often (seconds), so bogus kids cannot flood
    # the auth server; a rotated key is picked up on its first token after this interval.
    JWT_JWKS_MIN_REFETCH_SECONDS: float = Field(default=10.0, ge=0, le=3600)
    JWT_ISSUER: str | None = None
    JWT_AUDIENCE: str | None = None
    JWT_LEEWAY: int = Field(default=30, ge=0, le=60)

    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    MAX_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    # Serving (python -m app.serve): worker processes, and the proxies trusted for X-Forwarded-*.
    WEB_CONCURRENCY: int = Field(default=1, ge=1, le=64)
    FORWARDED_ALLOW_IPS: str = "127.0.0.1"
    # HTTP limits of `python -m app.serve` (README "Limits"): request line + headers, in bytes; seconds
    # a request head may take to arrive and a request body may stall; connections per worker process.
    MAX_HEADER_BYTES: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    HTTP_READ_TIMEOUT_S: float = Field(default=10.0, gt=0, le=300)
    MAX_CONNECTIONS: int = Field(default=512, ge=1, le=65536)
    # Swagger UI (/docs) and ReDoc (/redoc), served from a pinned package; /openapi.json stays.
    DOCS_ENABLED: bool = True
    # Rate limits (README "Operating it"): a read and a write budget per user (the token's subject)
    # and a budget of failed authentications per client address, as `limits` rate strings
    # ("1200/minute", "20/second", "5000/hour"); false turns all of them off.
    RATE_LIMIT_ENABLED: bool = True
    RATE_LIMIT_READ: str = "1200/minute"
    RATE_LIMIT_WRITE: str = "300/minute"
    RATE_LIMIT_AUTH_FAILURES: str = "100/minute"
    # memory:// counts per worker process; redis://[:password@]host:port/db (or rediss://) is one budget
    # across every worker and replica.
    RATE_LIMIT_STORAGE_URL: SecretStr = SecretStr("memory://")
    # GET /metrics in Prometheus' text format; with METRICS_TOKEN set it needs that bearer token.
    METRICS_ENABLED: bool = False
    METRICS_TOKEN: SecretStr | None = None
    # Change feed and live events (README "Keeping clients in sync"): days a delete stays reportable
    # (older cursors get 410); open event streams per user and worker process (the next is 429);
    # seconds between keepalive comments on an idle stream.
    SYNC_TOMBSTONE_DAYS: float = Field(default=30, gt=0, le=3650)
    SYNC_MAX_STREAMS_PER_USER: int = Field(default=5, ge=1, le=1000)
    SYNC_KEEPALIVE_S: float = Field(default=15, gt=0, le=15)
    # Only for tests/test_changes_race.py, which shows the feed then skips changes: false numbers
    # changes as a database sequence would, outside the writing transaction (app/services/changes.py).
    # Never set it.
    SYNC_ORDERED_COMMITS: bool = True

    @field_validator("CORS_ORIGINS", "JWT_ALGORITHMS", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("JWT_SECRET")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # A short secret is brute-forceable offline (RFC 7518 3.2 asks for >= 256 bits for HS256).
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @field_validator("JWT_SECRET", "JWT_JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("JWT_JWKS_URL")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http(s) URL such as http://localhost:3000/api/auth/jwks")
        return value

    @model_validator(mode="after")
    def _some_verification(self) -> Settings:
        if self.JWT_SECRET is None and self.JWT_JWKS_URL is None:
            raise ValueError("set JWT_SECRET (HS256 shared secret) or JWT_JWKS_URL (Better Auth JWKS)")
        # RFC 7518 3.2: the key must be at least as long as the hash output.
        needed = {"HS256": 32, "HS384": 48, "HS512": 64}[self.JWT_ALGORITHM]
        if self.JWT_SECRET is not None and len(self.JWT_SECRET.get_secret_value().encode()) < needed:
            raise ValueError(f"JWT_SECRET must be at least {needed} bytes for {self.JWT_ALGORITHM}")
        return self

    # Host names (the Host header: `name`, `name:port` or `name:*`) the MCP endpoint answers for
    # besides 127.0.0.1/localhost; any other Host is a 421 (DNS-rebinding protection). `*` turns the
    # check off, for a proxy that validates Host itself.
    MCP_ALLOWED_HOSTS: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("MCP_ALLOWED_HOSTS", mode="before")
    @classmethod
    def _host_names(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list):
            for host in value:
                if not isinstance(host, str) or (host != "*" and not _HOST.fullmatch(host)):
                    raise ValueError("must be host names such as api.example.com or api.example.com:8443 (no scheme)")
        return value

    @field_validator("RATE_LIMIT_READ", "RATE_LIMIT_WRITE", "RATE_LIMIT_AUTH_FAILURES")
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            items = parse_many(value)
        except ValueError:
            items = []
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError("must be one rate such as 1200/minute, 20/second or 5000/hour")
        return value

    @field_validator("RATE_LIMIT_STORAGE_URL")
    @classmethod
    def _rate_limit_storage(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        scheme = url.partition("://")[0]
        if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
            raise ValueError("must be memory:// or a redis://, rediss:// or redis+unix:// URL")
        if scheme != "memory":
            # What the app's Redis client cannot do is refused here, at startup, not ignored.
            parse_redis_url(url)
        return value

    @field_validator("METRICS_TOKEN", mode="before")
    @classmethod
    def _metrics_token(cls, value: object) -> object:
        if value == "":
            return None
        if isinstance(value, str) and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value


# A Host header value: a DNS name, an IPv4 address or a bracketed IPv6 address; `:port` or `:*` optional.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(?:[0-9]{1,5}|\*))?")


def config_error_line(exc: ValidationError) -> str:
    """One line naming the bad variables, never their values."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        # Checks across variables have no location; their messages name the variables themselves.
        problems.append(f"{name}: {message}" if name else message)
    return "configuration error: " + "; ".join(problems)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
