"""Shared verification primitives: constant-time compare over several secrets, time window."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

from gatehouse.webhooks.errors import InvalidSignature


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def any_signature_matches(expected: Iterable[bytes], provided: Iterable[bytes]) -> bool:
    """True if any provided signature equals any expected one, compared in constant time."""
    provided = list(provided)
    matched = False
    for want in expected:
        for got in provided:
            # No early exit: the time taken must not depend on which candidate matched.
            matched |= hmac.compare_digest(want, got)
    return matched


def check_timestamp(raw: str | None, tolerance: int, *, millis: bool = False) -> int:
    """Parse a unix timestamp header and reject it outside +-tolerance seconds."""
    if raw is None or raw == "":
        raise InvalidSignature("missing timestamp")
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidSignature("timestamp is not an integer") from None
    try:
        seconds = value / 1000 if millis else float(value)
    except OverflowError:
        raise InvalidSignature(f"timestamp outside the {tolerance}s tolerance") from None
    if abs(time.time() - seconds) > tolerance:
        raise InvalidSignature(f"timestamp outside the {tolerance}s tolerance")
    return value
