"""The HTTP side of /mcp: Host/Origin protection, the bearer token, and the RFC 9728 metadata.

The SDK has its own bearer-auth layer, but it reduces every failure to "no user" (so an expired
token and an unreachable JWKS would look alike), wants a static resource URL and an authorization
server even for shared-secret tokens, and answers in its own error shape. This wrapper instead
verifies with the API's TokenVerifier (same algorithms, issuer/audience, expiry, cache, revocation
as /api) and answers like /api does (problem+json, `WWW-Authenticate: Bearer`), adding the
`resource_metadata` parameter MCP clients use to discover how to get a token.
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.jwt import TokenVerifier
from app.config import Settings
from app.errors import Problem, Unauthorized

logger = logging.getLogger("app.mcp")

MCP_PATH: Final = "/mcp"
METADATA_PATH: Final = "/.well-known/oauth-protected-resource" + MCP_PATH
# Where the wrapper leaves the verified owner id for the tools (the ASGI scope of the request).
OWNER_SCOPE_KEY: Final = "task_api.owner"

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


# DNS-rebinding protection: the Host header names a host this endpoint does not serve.
class MisdirectedRequest(Problem, status=421):
    """The host name is not allowed for /mcp; add it to MCP_ALLOWED_HOSTS."""


# A browser page from an origin that may not call /mcp.
class OriginNotAllowed(Problem, status=403):
    """Requests from this Origin are not allowed to call /mcp."""


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host/Origin checks: 127.0.0.1/localhost/[::1] on any port, plus MCP_ALLOWED_HOSTS."""
    if "*" in settings.MCP_ALLOWED_HOSTS:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts: list[str] = []
    for host in (*_LOCAL_HOSTS, *settings.MCP_ALLOWED_HOSTS):
        # A name without a port matches it on any port (and on the scheme's default, no port).
        hosts.extend([host] if host.rsplit("]", 1)[-1].count(":") else [host, f"{host}:*"])
    # Browsers send Origin; agents and proxies usually do not (then nothing is checked). Pages of
    # the allowed hosts themselves and the CORS_ORIGINS frontends may call.
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    origins.extend(settings.CORS_ORIGINS)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def authorization_server(settings: Settings) -> str | None:
    """Who issues the tokens, for the metadata: JWT_ISSUER, else the origin of JWT_JWKS_URL."""
    if settings.JWT_ISSUER:
        return settings.JWT_ISSUER
    if settings.JWT_JWKS_URL:
        parts = urlsplit(settings.JWT_JWKS_URL)
        return f"{parts.scheme}://{parts.netloc}"
    return None


def _origin(request: Request) -> str:
    # The scheme honours X-Forwarded-Proto from FORWARDED_ALLOW_IPS (uvicorn's proxy headers); the
    # host is the Host header, which the check above has already accepted.
    return f"{request.url.scheme}://{request.url.netloc}"


def resource_metadata_url(request: Request) -> str:
    """The RFC 9728 document's URL for the MCP endpoint as this request reached it."""
    return _origin(request) + METADATA_PATH


class McpHttpEndpoint:
    """ASGI app at /mcp: checks Host and Origin, verifies the bearer token, then hands the request,
    with the owner id in its scope, to the SDK's Streamable HTTP handler.

    Problems are raised, not answered here, so the app's one handler renders them (problem+json,
    request id); every request is authenticated on its own, so a token that expires between two
    calls of one agent session is refused like any other.
    """

    def __init__(self, handler: ASGIApp, security: TransportSecuritySettings) -> None:
        self._handler = handler
        self._security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request to /mcp."""
        request = Request(scope)
        refused = await self._security.validate_request(request)
        if refused is not None:
            # The SDK logs the offending header; the client learns which setting to change.
            raise MisdirectedRequest() if refused.status_code == 421 else OriginNotAllowed()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        try:
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("A bearer token is required.", error=None)
            verifier: TokenVerifier = request.app.state.verifier
            owner = await verifier.user_id(token)
        except Unauthorized as exc:
            challenge = exc.headers["WWW-Authenticate"]
            exc.headers["WWW-Authenticate"] = f'{challenge}, resource_metadata="{resource_metadata_url(request)}"'
            raise
        scope[OWNER_SCOPE_KEY] = owner
        await self._handler(scope, receive, send)


def protected_resource_metadata(settings: Settings) -> Any:
    """The handler of GET /.well-known/oauth-protected-resource/mcp (RFC 9728)."""
    issuer = authorization_server(settings)

    async def metadata(request: Request) -> JSONResponse:
        document: dict[str, Any] = {
            "resource": _origin(request) + MCP_PATH,
            "bearer_methods_supported": ["header"],
            "resource_name": "Task API",
        }
        if issuer is not None:
            document["authorization_servers"] = [issuer]
        return JSONResponse(document, headers={"Cache-Control": "max-age=3600"})

    return metadata
