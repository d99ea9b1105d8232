"""DATABASE_URL as people paste it, translated for the async drivers; libpq's sslmode exactly; and a
failed connection described in one line.
"""

from __future__ import annotations

import datetime as dt
import errno
import socket
import sqlite3
import ssl
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import exc as sa_exc

from app.dburl import TLS_FIX, DatabaseURLError, connection_failure, engine_spec

NEON = "postgresql://alex:AbC123dEf@ep-cool-darkness-123456{pooler}.us-east-2.aws.neon.tech/dbname?sslmode=require&channel_binding=require"
REMOTE = "postgresql://u:pw@db.example.com/db"


@pytest.fixture(autouse=True)
def no_libpq_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PGSSLMODE/PGSSLROOTCERT and an empty home: only the URL decides (each test adds what it needs)."""
    for name in ("PGSSLMODE", "PGSSLROOTCERT"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def _cert_pair(directory: Path, name: str, *, password: bytes | None = None) -> tuple[Path, Path]:
    """A self-signed certificate (usable as a CA file or a client certificate) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A CA certificate file, as sslrootcert would name it."""
    cert, _ = _cert_pair(tmp_path, "private-ca")
    return cert


def tls_of(url: str) -> object:
    """What asyncpg receives as its `ssl` argument for `url`."""
    return engine_spec(url, connect_timeout=3).connect_args["ssl"]


def context_of(url: str) -> ssl.SSLContext:
    """The SSLContext asyncpg receives for `url`."""
    context = tls_of(url)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    return context


# --- drivers, pooler detection, parameters -----------------------------------------------------------


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
    # sslmode=require as in libpq: encrypted, the certificate not checked, and a warning saying so.
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert spec.tls_warning is not None
    assert "channel_binding=require" in spec.tls_warning and TLS_FIX in spec.tls_warning
    assert "AbC123dEf" not in spec.tls_warning and "neon.tech" not in spec.tls_warning
    assert spec.connect_args["timeout"] == 3
    assert spec.behind_pooler is bool(pooler)
    if pooler:
        assert spec.connect_args["statement_cache_size"] == 0
    else:
        assert "statement_cache_size" not in spec.connect_args


def test_engine_spec_neon_url_with_the_recommended_parameters_is_verified_without_warning() -> None:
    url = NEON.format(pooler="-pooler").replace("sslmode=require", "sslmode=verify-full&sslrootcert=system")
    spec = engine_spec(url, connect_timeout=3)
    context = spec.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert spec.tls_warning is None


def test_engine_spec_pgbouncer_by_port_or_flag() -> None:
    assert engine_spec("postgresql://u@localhost:6432/db", connect_timeout=3).behind_pooler
    assert engine_spec("postgresql://u@localhost/db?pgbouncer=true", connect_timeout=3).behind_pooler
    assert not engine_spec("postgresql://u@localhost:5432/db", connect_timeout=3).behind_pooler


def test_engine_spec_connect_timeout_from_url() -> None:
    assert engine_spec("postgresql://u@h/db?connect_timeout=7", connect_timeout=3).connect_args["timeout"] == 7


def test_engine_spec_sqlite_has_no_tls() -> None:
    spec = engine_spec("sqlite:///tasks.db", connect_timeout=3)
    assert "ssl" not in spec.connect_args and spec.tls_warning is None


@pytest.mark.parametrize(
    "raw",
    [
        "mysql://root:pw@db/x",
        "not a url",
        "postgresql://u:pw@h/db?sslmode=sometimes",
        "postgresql://u:pw@h/db?weird_param=1",
        "postgresql://u:pw@h/db?connect_timeout=soon",
        "postgresql://u:pw@h/db?sslmode=require&sslmode=disable",
        "postgresql://u:pw@h/db?sslmode=require&sslrootcert=/no/such/ca.pem",
        "postgresql://u:pw@h/db?sslmode=require&sslrootcert=system",
        "postgresql://u:pw@h/db?sslmode=verify-ca&sslrootcert=system",
        "postgresql://u:pw@h/db?sslmode=disable&channel_binding=require",
        "postgresql://u:pw@h/db?sslmode=require&channel_binding=always",
        "postgresql://u:pw@h/db?sslmode=require&sslkey=/k.pem",
        "postgresql://u:pw@h/db?sslmode=require&sslcert=/no/such/client.crt",
        "postgresql://u:pw@h/db?sslmode=require&sslcrl=/x.crl",
    ],
)
def test_engine_spec_rejects_unusable_urls_without_echoing_them(raw: str) -> None:
    with pytest.raises(DatabaseURLError) as caught:
        engine_spec(raw, connect_timeout=3)
    assert "pw" not in str(caught.value)


# --- sslmode: what asyncpg receives ------------------------------------------------------------------


def test_sslmode_disable_is_no_tls_and_no_warning() -> None:
    spec = engine_spec(f"{REMOTE}?sslmode=disable", connect_timeout=3)
    assert spec.connect_args["ssl"] is False
    assert spec.tls_warning is None


@pytest.mark.parametrize("mode", ["allow", "prefer"])
def test_sslmode_allow_and_prefer_leave_the_fallback_to_asyncpg_and_warn(mode: str) -> None:
    # asyncpg implements libpq's fallbacks only for these strings (an SSLContext would mean require):
    # allow tries without TLS first, prefer with TLS first; neither verifies the certificate.
    spec = engine_spec(f"{REMOTE}?sslmode={mode}", connect_timeout=3)
    assert spec.connect_args["ssl"] == mode
    assert spec.tls_warning is not None and f"sslmode={mode}" in spec.tls_warning
    assert TLS_FIX in spec.tls_warning


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", ""])
def test_sslmode_absent_is_prefer_quietly_on_this_machine(host: str) -> None:
    spec = engine_spec(f"postgresql://u@{host}/db", connect_timeout=3)
    assert spec.connect_args["ssl"] == "prefer"  # libpq's and psql's default
    assert spec.tls_warning is None


def test_sslmode_absent_on_a_remote_host_is_prefer_with_a_warning() -> None:
    spec = engine_spec(REMOTE, connect_timeout=3)
    assert spec.connect_args["ssl"] == "prefer"
    assert spec.tls_warning is not None and spec.tls_warning.startswith("no sslmode")


def test_sslmode_from_pgsslmode_when_the_url_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    context = context_of(REMOTE)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # The URL wins over the environment, as in libpq.
    assert tls_of(f"{REMOTE}?sslmode=disable") is False


def test_sslmode_require_encrypts_without_verifying() -> None:
    spec = engine_spec(f"{REMOTE}?sslmode=require", connect_timeout=3)
    context = spec.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert spec.tls_warning is not None
    assert spec.tls_warning.startswith("sslmode=require encrypts the connection but does not verify")
    assert "channel_binding" not in spec.tls_warning


def test_sslmode_require_with_sslrootcert_is_verify_ca(ca_file: Path) -> None:
    spec = engine_spec(f"{REMOTE}?sslmode=require&sslrootcert={ca_file}", connect_timeout=3)
    context = spec.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "private-ca"),),)]
    assert spec.tls_warning is None


def test_sslmode_require_with_libpqs_default_root_cert_is_verify_ca(ca_file: Path) -> None:
    # libpq: "if a root CA file exists, sslmode=require behaves like verify-ca" (~/.postgresql/root.crt).
    postgresql_dir = Path.home() / ".postgresql"
    postgresql_dir.mkdir()
    (postgresql_dir / "root.crt").write_bytes(ca_file.read_bytes())
    context = context_of(f"{REMOTE}?sslmode=require")
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert len(context.get_ca_certs()) == 1


def test_sslmode_require_with_pgsslrootcert_is_verify_ca(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> None:
    monkeypatch.setenv("PGSSLROOTCERT", str(ca_file))
    context = context_of(f"{REMOTE}?sslmode=require")
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname


@pytest.mark.parametrize(("mode", "check_hostname"), [("verify-ca", False), ("verify-full", True)])
def test_sslmode_verify_modes_check_the_chain(mode: str, check_hostname: bool, ca_file: Path) -> None:
    spec = engine_spec(f"{REMOTE}?sslmode={mode}&sslrootcert={ca_file}", connect_timeout=3)
    context = spec.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is check_hostname
    assert spec.tls_warning is None
    # The named file replaces the system's CAs rather than adding to them, as in libpq.
    assert len(context.get_ca_certs()) == 1


def test_sslmode_verify_full_without_a_root_cert_uses_the_system_store() -> None:
    # libpq would refuse to connect; this is what sslrootcert=system means.
    spec = engine_spec(f"{REMOTE}?sslmode=verify-full", connect_timeout=3)
    context = spec.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert spec.tls_warning is None


def test_sslmode_verify_ca_without_a_root_cert_is_refused() -> None:
    # Any publicly trusted certificate for any name would pass: libpq refuses it too.
    with pytest.raises(DatabaseURLError, match="verify-ca needs sslrootcert"):
        engine_spec(f"{REMOTE}?sslmode=verify-ca", connect_timeout=3)


@pytest.mark.parametrize("query", ["sslrootcert=system", "sslmode=verify-full&sslrootcert=system"])
def test_sslrootcert_system_is_verify_full_with_the_system_store(query: str) -> None:
    # libpq 16+: sslrootcert=system makes verify-full the default and refuses weaker modes.
    spec = engine_spec(f"{REMOTE}?{query}", connect_timeout=3)
    context = spec.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert spec.tls_warning is None


def test_channel_binding_is_dropped_silently_when_the_certificate_is_verified() -> None:
    spec = engine_spec(f"{REMOTE}?sslmode=verify-full&sslrootcert=system&channel_binding=require", connect_timeout=3)
    assert spec.tls_warning is None
    assert dict(spec.url.query) == {}


def test_sslcert_and_sslkey_are_presented_as_the_client_certificate(tmp_path: Path) -> None:
    cert, key = _cert_pair(tmp_path, "client")
    context_of(f"{REMOTE}?sslmode=verify-full&sslrootcert=system&sslcert={cert}&sslkey={key}")
    context_of(f"{REMOTE}?sslmode=require&sslcert={cert}&sslkey={key}")


def test_sslpassword_unlocks_an_encrypted_key_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    cert, key = _cert_pair(tmp_path, "client", password=b"key-passphrase")
    context_of(f"{REMOTE}?sslmode=require&sslcert={cert}&sslkey={key}&sslpassword=key-passphrase")
    # Without the password it fails at once instead of prompting on the terminal.
    for query in (f"sslcert={cert}&sslkey={key}", f"sslcert={cert}&sslkey={key}&sslpassword=nope"):
        with pytest.raises(DatabaseURLError, match="sslpassword"):
            engine_spec(f"{REMOTE}?sslmode=require&{query}", connect_timeout=3)


def test_sslcert_with_a_fallback_mode_is_refused(tmp_path: Path) -> None:
    cert, key = _cert_pair(tmp_path, "client")
    with pytest.raises(DatabaseURLError, match="sslmode=require, verify-ca or verify-full"):
        engine_spec(f"{REMOTE}?sslmode=prefer&sslcert={cert}&sslkey={key}", connect_timeout=3)


# --- a failed connection in one line --------------------------------------------------------------------


def _certificate_error(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] secret.example.com")
    error.verify_code = code
    return error


def _wrapped(error: BaseException) -> sa_exc.DBAPIError:
    # As SQLAlchemy hands a driver error to the caller: the original as `.orig` and as the cause.
    try:
        try:
            raise error
        except BaseException as original:
            raise sa_exc.DBAPIError("SELECT 1", None, original) from original
    except sa_exc.DBAPIError as wrapper:
        return wrapper


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (_certificate_error(19), "certificate is not trusted"),
        (_certificate_error(62), "not valid for the host name"),
        (_certificate_error(10), "expired"),
        (ssl.SSLError(1, "handshake"), "TLS handshake"),
        (socket.gaierror(-2, "Name or service not known"), "cannot be resolved"),
        (ConnectionRefusedError(111, "refused"), "refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
        (TimeoutError(), "did not answer in time"),
        (ConnectionError('PostgreSQL server at "h:5432" rejected SSL upgrade'), "does not accept TLS"),
        (ConnectionResetError(104, "reset"), "connection failed (ConnectionResetError)"),
        (asyncpg.exceptions.InvalidPasswordError("password authentication failed for user"), "password"),
        (asyncpg.exceptions.ProtocolViolationError("SASL authentication failed"), "password"),
        (asyncpg.exceptions.InvalidCatalogNameError('database "x" does not exist'), "database does not exist"),
        (asyncpg.exceptions.ProtocolViolationError('database "x" does not exist'), "database does not exist"),
        (asyncpg.exceptions.InvalidAuthorizationSpecificationError('role "x" does not exist'), "refused this user"),
        (asyncpg.exceptions.ProtocolViolationError("SSL required"), "requires TLS"),
        (
            asyncpg.exceptions.InvalidAuthorizationSpecificationError(
                'no pg_hba.conf entry for host "1.2.3.4", user "u", database "d", no encryption'
            ),
            "requires TLS",
        ),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), "connection slots"),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), "starting up"),
        (sqlite3.OperationalError("unable to open database file"), "SQLite database file"),
    ],
)
def test_connection_failure_names_the_cause(error: BaseException, words: str) -> None:
    for raised in (error, _wrapped(error)):
        line = connection_failure(raised)
        assert line is not None and words in line
        assert "\n" not in line and "secret.example.com" not in line and "h:5432" not in line


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        sqlite3.OperationalError("no such table: tasks"),
    ],
)
def test_connection_failure_is_none_for_other_errors(error: BaseException) -> None:
    assert connection_failure(error) is None
    assert connection_failure(_wrapped(error)) is None
