"""DATABASE_URL as people paste it, translated for the async drivers."""

from __future__ import annotations

import ssl

import pytest

from app.database import DatabaseURLError, engine_spec

NEON = "postgresql://alex:AbC123dEf@ep-cool-darkness-123456{pooler}.us-east-2.aws.neon.tech/dbname?sslmode=require&channel_binding=require"


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("sqlite:///tasks.db", "sqlite+aiosqlite"),
        ("sqlite:////tmp/x/tasks.db", "sqlite+aiosqlite"),
        ("postgresql://u:p@localhost/db", "postgresql+asyncpg"),
        ("postgres://u:p@localhost:5433/db", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u:p@localhost/db", "postgresql+asyncpg"),
    ],
)
def test_engine_spec_picks_the_async_driver(raw: str, driver: str) -> None:
    assert engine_spec(raw, connect_timeout=3).url.drivername == driver


@pytest.mark.parametrize("pooler", ["", "-pooler"])
def test_engine_spec_neon_url_works_unchanged(pooler: str) -> None:
    spec = engine_spec(NEON.format(pooler=pooler), connect_timeout=3)
    assert spec.url.drivername == "postgresql+asyncpg"
    assert dict(spec.url.query) == {}  # asyncpg would reject sslmode / channel_binding
    context = spec.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert spec.connect_args["timeout"] == 3
    assert spec.behind_pooler is bool(pooler)
    if pooler:
        assert spec.connect_args["statement_cache_size"] == 0
    else:
        assert "statement_cache_size" not in spec.connect_args


@pytest.mark.parametrize(("mode", "expected"), [("disable", False), ("prefer", "prefer"), ("allow", "prefer")])
def test_engine_spec_sslmodes_without_verification(mode: str, expected: object) -> None:
    assert engine_spec(f"postgresql://u@h/db?sslmode={mode}", connect_timeout=3).connect_args["ssl"] == expected


def test_engine_spec_verify_ca_skips_hostname() -> None:
    context = engine_spec("postgresql://u@h/db?sslmode=verify-ca", connect_timeout=3).connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname


def test_engine_spec_pgbouncer_by_port_or_flag() -> None:
    assert engine_spec("postgresql://u@localhost:6432/db", connect_timeout=3).behind_pooler
    assert engine_spec("postgresql://u@localhost/db?pgbouncer=true", connect_timeout=3).behind_pooler
    assert not engine_spec("postgresql://u@localhost:5432/db", connect_timeout=3).behind_pooler


def test_engine_spec_connect_timeout_from_url() -> None:
    assert engine_spec("postgresql://u@h/db?connect_timeout=7", connect_timeout=3).connect_args["timeout"] == 7


@pytest.mark.parametrize(
    "raw",
    [
        "mysql://root:pw@db/x",
        "not a url",
        "postgresql://u:pw@h/db?sslmode=sometimes",
        "postgresql://u:pw@h/db?weird_param=1",
        "postgresql://u:pw@h/db?connect_timeout=soon",
    ],
)
def test_engine_spec_rejects_unusable_urls_without_echoing_them(raw: str) -> None:
    with pytest.raises(DatabaseURLError) as caught:
        engine_spec(raw, connect_timeout=3)
    assert "pw" not in str(caught.value)
