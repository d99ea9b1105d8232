"""Helpers shared by the tests: real tokens, real JWKS servers, a cuttable TCP proxy, `make migrate`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

BACKEND_DIR = Path(__file__).resolve().parents[2]
SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def new_user() -> str:
    """A fresh user id, so every test owns its data and the suite can run in any order."""
    return f"user-{uuid.uuid4()}"


def hs256_token(sub: str | None, *, secret: str = SECRET, exp_in: int = 600, **claims: Any) -> str:
    """A real HS256 token for `sub` (None leaves `sub` out)."""
    payload: dict[str, Any] = {"iat": int(time.time()), "exp": int(time.time()) + exp_in, **claims}
    if sub is not None:
        payload["sub"] = sub
    return jwt.encode(payload, secret, algorithm="HS256")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem+json response with `status`, and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    return body


def assert_401(response: httpx.Response) -> dict[str, Any]:
    """Assert a 401 problem+json whose bearer challenge says `invalid_token`."""
    body = assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    return body


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


def auth(user_id: str) -> dict[str, str]:
    """Headers authenticating as `user_id` with a fresh HS256 token."""
    return bearer(hs256_token(user_id))


class KeyPair:
    """An asymmetric signing key with its public JWK, as Better Auth would publish it."""

    def __init__(self, algorithm: str, kid: str | None = None) -> None:
        self.algorithm = algorithm
        self.kid = kid or uuid.uuid4().hex
        self.private_key: Any
        if algorithm == "EdDSA":
            self.private_key = ed25519.Ed25519PrivateKey.generate()
        elif algorithm == "ES256":
            self.private_key = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "ES512":
            self.private_key = ec.generate_private_key(ec.SECP521R1())
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algo = jwt.get_algorithm_by_name(algorithm)
        self.jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private_key.public_key()))
        self.jwk.update({"kid": self.kid, "alg": algorithm})

    def sign(self, sub: str | None, *, exp_in: int = 600, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token for `sub` signed with this key."""
        payload: dict[str, Any] = {"iat": int(time.time()), "exp": int(time.time()) + exp_in, **claims}
        if sub is not None:
            payload["sub"] = sub
        return jwt.encode(
            payload, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid, **(headers or {})}
        )


class JWKSServer:
    """A real HTTP server on 127.0.0.1 publishing a key set that tests can change, and counting fetches."""

    def __init__(self, keys: list[KeyPair]) -> None:
        self.keys = keys
        self.fetches = 0
        self.status = 200
        self.body: bytes | None = None  # overrides the key set (e.g. broken JSON)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = (
                    server.body
                    if server.body is not None
                    else json.dumps({"keys": [k.jwk for k in server.keys]}).encode()
                )
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/api/auth/jwks"
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> JWKSServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class TCPProxy:
    """A TCP proxy in front of the database that a test can cut (refuse or black-hole) and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "forward"  # forward | refuse | hang
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.mode = "forward"

    async def cut(self, mode: str = "refuse") -> None:
        """Drop every connection; then refuse new ones ("refuse") or accept and never answer ("hang")."""
        self.mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Forward again."""
        if self._server is None:
            await self.start()
        self.mode = "forward"

    async def close(self) -> None:
        """Stop for good."""
        await self.cut("refuse")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode != "forward":
            return  # hang: hold the socket open, say nothing
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every formatted log line written while the block runs (JSON formatter, like production)."""
    import logging

    from app.logging import JSONFormatter, quiet_libraries

    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    quiet_libraries()
    handler = ListHandler(level=logging.DEBUG)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def alembic_upgrade(**env: str) -> subprocess.CompletedProcess[str]:
    """`alembic upgrade head` as `make migrate` runs it, configured by `env` alone (no .env file)."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "ENV_FILE": os.devnull}
    return subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        cwd=BACKEND_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def only_line(result: subprocess.CompletedProcess[str], *secrets: str) -> str:
    """The one line a failed command printed: no traceback, none of `secrets`."""
    assert result.returncode != 0, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in lines[0] and not [secret for secret in secrets if secret in lines[0]]
    return lines[0]
