"""Mint an HS256 token from the configured JWT_SECRET, for trying the API locally.

python -m app.devtoken alice [--minutes 60]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import jwt

from app.main import load_settings


def mint(user_id: str, minutes: int = 60) -> str:
    """A token for `user_id` signed with the configured secret and issuer/audience."""
    settings = load_settings()
    if settings.JWT_SECRET is None:
        raise SystemExit("JWT_SECRET is not set: tokens come from your Better Auth server (JWT_JWKS_URL)")
    now = datetime.now(UTC)
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + timedelta(minutes=minutes)}
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    if settings.JWT_AUDIENCE:
        claims["aud"] = settings.JWT_AUDIENCE
    return jwt.encode(claims, settings.JWT_SECRET.get_secret_value(), algorithm=settings.JWT_ALGORITHM)


def main(argv: list[str] | None = None) -> None:
    """Print a token for the user named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("user_id")
    parser.add_argument("--minutes", type=int, default=60)
    args = parser.parse_args(argv)
    if not args.user_id.strip():
        parser.error("user_id must not be empty")
    sys.stdout.write(mint(args.user_id, args.minutes) + "\n")


if __name__ == "__main__":
    main()
