"""Opaque cursors: a payload and a checksum binding it to what it was issued for (its owner, and for a
list page the sort and filters), as unpadded base64url. The change feed's and the task list's
cursors are both made here; each kind has its own `person`, so one kind is never taken for the other.

The checksum is not a secret: a made-up cursor can only make its owner's own answers incomplete.
"""

from __future__ import annotations

import base64
import hashlib

CHECK_BYTES = 6


def _check(payload: bytes, context: bytes, person: bytes) -> bytes:
    return hashlib.blake2b(payload + context, digest_size=CHECK_BYTES, person=person).digest()


def seal(payload: bytes, context: bytes, *, person: bytes) -> str:
    """The opaque text of `payload`, valid only where `context` (and `person`) are the same."""
    return base64.urlsafe_b64encode(payload + _check(payload, context, person)).decode().rstrip("=")


def unseal(text: str, context: bytes, *, person: bytes, max_length: int) -> bytes | None:
    """The payload `text` was sealed with for `context`, or None if it is not such a cursor."""
    if len(text) > max_length:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    payload, check = raw[:-CHECK_BYTES], raw[-CHECK_BYTES:]
    if len(raw) <= CHECK_BYTES or check != _check(payload, context, person):
        return None
    return payload
