"""Harness for a real Better Auth server (Node) that tests use to mint genuine JWTs.

Typical use::

    ensure_installed()
    with BetterAuthServer(alg="ES256") as ba:
        user_id, token = sign_up_and_get_token(ba.base_url, "a@x.io", "pw-1234567", "A")
        # verify `token` against ba.jwks_url, issuer/audience == ba.base_url

The server keeps everything in memory, so each start is a fresh user base and key set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from types import TracebackType
from typing import IO, Any, Self

import httpx

from tests.support.npm import npm_ci

SERVER_DIR = Path(__file__).resolve().parents[1] / "interop" / "betterauth"
AUTH_PATH = "/api/auth"
# Every variable server.mjs reads.
_SERVER_ENV = frozenset(
    {
        "PORT",
        "BETTER_AUTH_URL",
        "BETTER_AUTH_SECRET",
        "JWT_ALG",
        "JWT_EXPIRATION",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "ROTATION_INTERVAL",
        "GRACE_PERIOD",
    }
)


def ensure_installed(directory: Path = SERVER_DIR) -> None:
    """The Better Auth server's pinned packages, installed once."""
    npm_ci(directory)


class BetterAuthServer:
    """Starts `node server.mjs` on a free 127.0.0.1 port; use as a context manager.

    The port is chosen by the OS inside Node (PORT=0) and reported on the
    `READY <port>` line, so there is no pick-then-bind race.
    """

    def __init__(
        self,
        *,
        alg: str = "EdDSA",
        expiration: str = "15m",
        rotation_interval: int | None = None,
        grace_period: int | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        secret: str | None = None,
        startup_timeout: float = 20.0,
        directory: Path = SERVER_DIR,
    ) -> None:
        # Inherit PATH etc., but never stray server settings from the caller's shell.
        inherited = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV}
        self._env = {
            **inherited,
            "PORT": "0",
            "JWT_ALG": alg,
            "JWT_EXPIRATION": expiration,  # must carry a unit, e.g. "2s"
        }
        optional = {
            "ROTATION_INTERVAL": rotation_interval,
            "GRACE_PERIOD": grace_period,
            "JWT_ISSUER": issuer,
            "JWT_AUDIENCE": audience,
            "BETTER_AUTH_SECRET": secret,
        }
        self._env.update({k: str(v) for k, v in optional.items() if v is not None})
        self._issuer = issuer
        self._audience = audience
        self._timeout = startup_timeout
        self._directory = directory
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}{AUTH_PATH}/jwks"

    @property
    def issuer(self) -> str:
        """The `iss` claim tokens will carry (Better Auth defaults it to baseURL)."""
        return self._issuer or self.base_url

    @property
    def audience(self) -> str:
        """The `aud` claim tokens will carry (Better Auth defaults it to baseURL)."""
        return self._audience or self.base_url

    def start(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not found on PATH; the Better Auth harness needs Node 20+")
        # stderr goes to a file: it is only read on failure, and a pipe could fill up
        # and block Node. It outlives this method (closed in __exit__), hence no `with`.
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [node, "server.mjs"],
            cwd=self._directory,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        lines: Queue[str] = Queue()
        # Drain stdout for the life of the process so Node never blocks on a full pipe.
        threading.Thread(target=_pump, args=(self._proc.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=self._timeout)
        except Empty:
            line = ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(
                f"Better Auth server not ready within {self._timeout}s "
                f"(stdout: {line!r}); stderr:\n{self.stderr_text()}"
            )
        self.port = int(line.split()[1])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stderr_text(self) -> str:
        """Server log so far (Better Auth logs errors to stderr), for failure messages."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _pump(stream: IO[str] | None, lines: Queue[str]) -> None:
    if stream is None:
        return
    for line in stream:
        lines.put(line.strip())
    # EOF: the process exited (before READY, if nobody has consumed a line yet).
    lines.put("")


@dataclass(frozen=True)
class Session:
    """A signed-in browser session: the Better Auth cookies a frontend would hold."""

    base_url: str
    user_id: str
    cookies: dict[str, str] = field(repr=False)


def _client(base_url: str, cookies: dict[str, str] | None = None) -> httpx.Client:
    # Better Auth rejects cookie-bearing POSTs without a trusted Origin (CSRF check)
    # and validates Origin whenever one is sent; baseURL is always trusted: send it.
    return httpx.Client(base_url=base_url, headers={"Origin": base_url}, cookies=cookies, timeout=10)


def _session_from(client: httpx.Client, response: httpx.Response) -> Session:
    response.raise_for_status()
    user_id = str(response.json()["user"]["id"])
    return Session(str(client.base_url).rstrip("/"), user_id, dict(client.cookies.items()))


def sign_up(base_url: str, email: str, password: str, name: str) -> Session:
    """POST /sign-up/email (no email verification, so it also signs the user in)."""
    with _client(base_url) as client:
        body = {"email": email, "password": password, "name": name}
        return _session_from(client, client.post(f"{AUTH_PATH}/sign-up/email", json=body))


def sign_in(base_url: str, email: str, password: str) -> Session:
    """POST /sign-in/email: a new, independent session for an existing user."""
    with _client(base_url) as client:
        body = {"email": email, "password": password}
        return _session_from(client, client.post(f"{AUTH_PATH}/sign-in/email", json=body))


def get_token(session: Session, *, from_session_header: bool = False) -> str:
    """Mint a fresh JWT for the session, as the frontend does.

    Default: GET /token (what `authClient.token()` calls). With from_session_header,
    read the `set-auth-jwt` header of GET /get-session instead. Both sign with the
    current key, so after a rotation interval has elapsed this mints the new key.
    """
    with _client(session.base_url, session.cookies) as client:
        if from_session_header:
            response = client.get(f"{AUTH_PATH}/get-session")
            response.raise_for_status()
            return response.headers["set-auth-jwt"]
        response = client.get(f"{AUTH_PATH}/token")
        response.raise_for_status()
        return str(response.json()["token"])


def sign_up_and_get_token(base_url: str, email: str, password: str, name: str) -> tuple[str, str]:
    """Sign up a new user and return (user_id, jwt)."""
    session = sign_up(base_url, email, password, name)
    return session.user_id, get_token(session)


def fetch_jwks(base_url: str) -> dict[str, Any]:
    """GET the public JWKS ({"keys": [...]}) as currently published."""
    response = httpx.get(f"{base_url}{AUTH_PATH}/jwks", timeout=10)
    response.raise_for_status()
    jwks: dict[str, Any] = response.json()
    return jwks
