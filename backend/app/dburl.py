"""DATABASE_URL as providers give it, translated for the async drivers; and connection failures in words.

Pure: no FastAPI, no engine, no app module. Settings validate URLs with it, the engine is built from
its `EngineSpec`, and Alembic and the app describe a failed connection with `connection_failure`.

libpq's TLS parameters mean here what they mean to `psql`
(https://www.postgresql.org/docs/current/libpq-ssl.html):

| sslmode     | encrypted            | certificate checked                     |
|-------------|----------------------|-----------------------------------------|
| disable     | no                   | -                                       |
| allow       | if the server insists| no (tries without TLS first)            |
| prefer      | if the server offers | no (the default when sslmode is absent) |
| require     | yes                  | no; chain only if a root certificate is |
|             |                      | given (then it is verify-ca)            |
| verify-ca   | yes                  | chain                                   |
| verify-full | yes                  | chain and host name                     |

The root certificate is `sslrootcert` (a file, or `system` for the system's trust store), else
PGSSLROOTCERT, else ~/.postgresql/root.crt when it exists, as in libpq.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import sqlite3
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq's TLS parameters we translate for asyncpg (which rejects them as connect arguments).
_TLS_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "channel_binding")
# libpq parameters that have no asyncpg equivalent and are safe to drop.
_DROPPED_PARAMS = ("target_session_attrs", "gssencmode")
PGBOUNCER_PORT = 6432
# What to put in a URL whose server certificate is not verified (Neon's certificates are publicly
# trusted, so the system store verifies them).
TLS_FIX = (
    "use sslmode=verify-full&sslrootcert=system (Neon, or any publicly trusted certificate) "
    "or sslrootcert=/path/to/ca.pem (a private CA)"
)


class DatabaseURLError(ValueError):
    """DATABASE_URL cannot be used; the message never contains the URL itself."""


@dataclass(frozen=True)
class EngineSpec:
    """What `create_async_engine` needs for one DATABASE_URL."""

    url: URL
    connect_args: dict[str, Any] = field(default_factory=dict)
    is_sqlite: bool = False
    behind_pooler: bool = False
    # Set when the connection may be encrypted but the server's certificate is not verified: what
    # to log at startup (it names the fix, never the URL).
    tls_warning: str | None = None


@dataclass(frozen=True)
class TLS:
    """asyncpg's `ssl` argument for one URL, and whether the server's certificate gets verified."""

    argument: ssl.SSLContext | str | bool
    verified: bool
    warning: str | None = None


def _single(params: Mapping[str, str | tuple[str, ...]], key: str) -> str | None:
    value = params.get(key)
    if isinstance(value, tuple):
        raise DatabaseURLError(f"{key} is given more than once")
    return value


def _default_root_cert() -> str | None:
    # libpq: PGSSLROOTCERT, else ~/.postgresql/root.crt if that file exists.
    from_env = os.environ.get("PGSSLROOTCERT")
    if from_env:
        return from_env
    try:
        default = Path("~/.postgresql/root.crt").expanduser()
    except RuntimeError:  # no home directory to expand
        return None
    return str(default) if default.is_file() else None


def _is_local(host: str | None) -> bool:
    if host is None or host.startswith("/") or host == "localhost":
        return True  # a Unix socket, or the loopback interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unverified_warning(mode: str, *, explicit: bool, channel_binding: str | None) -> str:
    match mode:
        case "require":
            what = "sslmode=require encrypts the connection but does not verify the server's certificate"
        case "prefer" if not explicit:
            what = (
                "no sslmode: the connection is encrypted only if the server offers TLS (sslmode=prefer, "
                "as in psql) and the server's certificate is not verified"
            )
        case "prefer":
            what = (
                "sslmode=prefer falls back to an unencrypted connection if the server refuses TLS and does "
                "not verify the server's certificate"
            )
        case _:
            what = "sslmode=allow tries an unencrypted connection first and never verifies the server's certificate"
    line = f"{what}, so a man in the middle could read and alter the connection"
    if channel_binding == "require":
        line += " (channel_binding=require cannot protect it here: asyncpg has no SCRAM-SHA-256-PLUS)"
    return f"{line}; {TLS_FIX}"


def tls_for(params: Mapping[str, str | tuple[str, ...]], *, host: str | None) -> TLS:
    """Translate libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslpassword`,
    `channel_binding`) into asyncpg's `ssl` argument, with libpq's meaning of each.

    `host` decides only whether the implicit default (no sslmode) deserves a warning: on the
    loopback interface or a Unix socket it does not.
    """
    mode = _single(params, "sslmode") or os.environ.get("PGSSLMODE") or None
    explicit = mode is not None
    root_cert = _single(params, "sslrootcert") or os.environ.get("PGSSLROOTCERT") or None
    cert, key, password = (_single(params, name) for name in ("sslcert", "sslkey", "sslpassword"))
    channel_binding = _single(params, "channel_binding")

    if root_cert == "system":
        # libpq 16+: any certificate a public CA issued for any name would pass a weaker check.
        if mode is None:
            mode = "verify-full"
        elif mode != "verify-full":
            raise DatabaseURLError("sslrootcert=system needs sslmode=verify-full (libpq refuses weaker modes with it)")
    mode = mode or "prefer"  # libpq's default
    if mode not in SSL_MODES:
        raise DatabaseURLError(f"sslmode={mode!r} is not a known sslmode (use one of {', '.join(SSL_MODES)})")
    if channel_binding not in (None, "disable", "prefer", "require"):
        raise DatabaseURLError("channel_binding must be disable, prefer or require")
    if channel_binding == "require" and mode == "disable":
        raise DatabaseURLError("channel_binding=require needs TLS, but sslmode=disable turns it off")
    if key is not None and cert is None:
        raise DatabaseURLError("sslkey needs sslcert (the client certificate it belongs to)")
    # channel_binding=require is accepted and dropped: asyncpg cannot do SCRAM-SHA-256-PLUS, and
    # refusing the parameter would refuse every URL Neon hands out. Binding proves that the server
    # which checked the SCRAM password is the one at the other end of this TLS connection, so a man in
    # the middle cannot relay the login and keep the session. A verified certificate rules that man
    # out in its own way (verify-full; verify-ca trusts any certificate of that CA). With `require`
    # and no root certificate nothing stands in for binding: SCRAM still never reveals the password,
    # but the session can be taken over, which is what the startup warning says.

    if mode == "disable":
        return TLS(argument=False, verified=False)  # libpq ignores the certificate parameters too
    if mode in ("allow", "prefer"):
        if cert is not None:
            raise DatabaseURLError("sslcert/sslkey need sslmode=require, verify-ca or verify-full here")
        # asyncpg implements both fallbacks itself (allow: plaintext first; prefer: TLS first), with
        # an unverified context, as libpq does; an SSLContext would make it `require` instead.
        quiet = not explicit and _is_local(host)  # psql's default on this machine: nothing to warn about
        warning = None if quiet else _unverified_warning(mode, explicit=explicit, channel_binding=channel_binding)
        return TLS(argument=mode, verified=False, warning=warning)

    if root_cert is None:
        root_cert = _default_root_cert()
    if mode == "verify-ca" and root_cert is None:
        # The system's CAs vouch for any name they ever certified; without the host name check that
        # proves nothing (why libpq 16 refuses verify-ca with sslrootcert=system).
        raise DatabaseURLError(
            "sslmode=verify-ca needs sslrootcert=/path/to/ca.pem; with the system's CAs use sslmode=verify-full"
        )
    if mode == "require" and root_cert is None:
        # Encrypted, not verified: what libpq, psql and asyncpg do with `require`. The host name is
        # still sent (SNI), which Neon uses to route the connection.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        verified = False
    else:
        # verify-ca, verify-full, or `require` with a root certificate (libpq: then it is verify-ca).
        # verify-full without any root certificate, which libpq refuses, uses the system's trust
        # store: what `sslrootcert=system` asks for.
        cafile = None if root_cert in (None, "system") else root_cert
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ValueError):  # missing or unreadable file, or not PEM
            # Stricter than libpq, which silently skips verification under `require` when the named
            # file is missing: a typo in the path must not turn verification off.
            raise DatabaseURLError("sslrootcert cannot be read as a CA certificate file") from None
        context.check_hostname = mode == "verify-full"
        verified = True
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # libpq's default ssl_min_protocol_version
    if cert is not None:
        try:
            # A password is always given, so an encrypted key never prompts on the terminal.
            context.load_cert_chain(cert, keyfile=key, password=password or "")
        except (OSError, ValueError):
            raise DatabaseURLError(
                "sslcert/sslkey cannot be loaded (missing file, key not matching, or a wrong sslpassword)"
            ) from None
    warning = None if verified else _unverified_warning(mode, explicit=explicit, channel_binding=channel_binding)
    return TLS(argument=context, verified=verified, warning=warning)


def engine_spec(raw_url: str, *, connect_timeout: float) -> EngineSpec:
    """Translate a URL as users paste it (sqlite:///x.db, postgres://..., Neon's) for the async drivers."""
    try:
        url = make_url(raw_url)
    except Exception:
        raise DatabaseURLError("not a valid URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return EngineSpec(url=url.set(drivername="sqlite+aiosqlite"), is_sqlite=True, connect_args={"timeout": 5})
    if backend not in ("postgres", "postgresql"):
        raise DatabaseURLError(f"scheme {backend!r} is not supported (use sqlite or postgresql)")

    query = dict(url.query)
    tls_params = {key: query.pop(key) for key in _TLS_PARAMS if key in query}
    for key in _DROPPED_PARAMS:
        query.pop(key, None)
    # Neon adds `options=endpoint%3D<id>` for clients without SNI; asyncpg sends SNI, so that one is
    # safe to drop. Other options (statement_timeout, search_path…) would change behaviour: refuse.
    options = query.pop("options", None)
    if options is not None and not re.fullmatch(r"endpoint=[A-Za-z0-9-]+", str(options)):
        raise DatabaseURLError("the `options` parameter is not supported (other than Neon's endpoint=…)")
    pgbouncer = str(query.pop("pgbouncer", "")).lower() in ("1", "true")
    try:
        timeout = float(str(query.pop("connect_timeout", connect_timeout)))
    except ValueError:
        raise DatabaseURLError("connect_timeout must be a number of seconds") from None
    if query:
        raise DatabaseURLError(f"unsupported parameters: {', '.join(sorted(query))}")

    tls = tls_for(tls_params, host=url.host)
    connect_args: dict[str, Any] = {"timeout": timeout, "command_timeout": 30, "ssl": tls.argument}

    # Neon's pooled hosts end in "-pooler"; 6432 is PgBouncer's default port; `pgbouncer=true`
    # says so explicitly for any other pooler.
    behind_pooler = pgbouncer or "-pooler" in (url.host or "") or url.port == PGBOUNCER_PORT
    if behind_pooler:
        # PgBouncer in transaction mode hands each transaction a different server connection, so a
        # named prepared statement cached on one is missing on the next. Without caches asyncpg uses
        # unnamed statements, which live only within the transaction and leave nothing behind.
        connect_args["statement_cache_size"] = 0
    return EngineSpec(
        url=url.set(drivername="postgresql+asyncpg", query={}),
        connect_args=connect_args,
        behind_pooler=behind_pooler,
        tls_warning=tls.warning,
    )


# --- a failed connection, in one line ---------------------------------------------------------------

# OpenSSL's X509_V_ERR_* codes worth their own words (ssl.SSLCertVerificationError.verify_code).
_CERT_EXPIRED = 10
_HOSTNAME_MISMATCH = 62


def _causes(exc: BaseException) -> list[BaseException]:
    # SQLAlchemy wraps the driver's exception (`.orig`, `__cause__`); walk the whole chain once.
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < 20:
        current = pending.pop(0)
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        orig = getattr(current, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None, current.__cause__, current.__context__]
    return seen


def _from_sqlstate(sqlstate: str, message: str) -> str | None:
    # PgBouncer reports its own refusals as 08P01 with a message instead of a specific SQLSTATE.
    if sqlstate == "28P01" or (sqlstate.startswith(("08", "28")) and "authentication failed" in message):
        return "the password was rejected (check the user name and password)"
    if sqlstate == "3D000" or (sqlstate == "08P01" and "does not exist" in message and "database" in message):
        return "the database does not exist"
    if (sqlstate == "08P01" and "SSL required" in message) or (sqlstate == "28000" and "no encryption" in message):
        return "the server requires TLS, but sslmode=disable turned it off"
    if sqlstate.startswith("28"):
        return "the server refused this user (no such role, or pg_hba.conf does not let it in)"
    if sqlstate == "53300":
        return "the server has no connection slots left (too many connections)"
    if sqlstate in ("57P01", "57P02", "57P03"):
        return "the server is shutting down or starting up"
    if sqlstate.startswith("08"):
        return "the server closed the connection while it was being set up"
    return None


def connection_failure(exc: BaseException) -> str | None:
    """The cause of a failed database connection as one line for a person, or None when `exc` is not a
    connection failure (a bug, a failing statement).

    The line names the cause and the fix, never the URL, host, user or password: driver messages
    (which can carry them) are only inspected, never repeated.
    """
    causes = _causes(exc)
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            if cause.verify_code == _HOSTNAME_MISMATCH:
                return (
                    "the server's certificate is not valid for the host name in the URL (sslmode=verify-full); "
                    "connect with the name the certificate was issued for"
                )
            if cause.verify_code == _CERT_EXPIRED:
                return "the server's certificate has expired"
            return (
                "the server's certificate is not trusted: it does not chain to sslrootcert (or, without one, to "
                "the system's trusted CAs); set sslrootcert to the CA file that signed it, or sslrootcert=system "
                "for a publicly trusted certificate"
            )
        if isinstance(cause, ssl.SSLError):
            return "the TLS handshake with the server failed"
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str):
            described = _from_sqlstate(sqlstate, str(cause))
            if described is not None:
                return described
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return "the host name cannot be resolved (DNS)"
        if isinstance(cause, ConnectionRefusedError):
            return "the connection was refused (nothing listens at that host and port)"
        if isinstance(cause, TimeoutError):
            return "the server did not answer in time (connect_timeout / DB_CONNECT_TIMEOUT)"
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "the host is unreachable"
        if isinstance(cause, ConnectionError) and "rejected SSL upgrade" in str(cause):
            return (
                "the server does not accept TLS connections, which sslmode=require and stronger need "
                "(sslmode=prefer or disable only on a trusted network)"
            )
        if isinstance(cause, OSError):
            return f"the connection failed ({type(cause).__name__})"
        if isinstance(cause, sqlite3.OperationalError) and "unable to open database file" in str(cause):
            return "the SQLite database file cannot be opened (check the path and the folder's permissions)"
    return None
