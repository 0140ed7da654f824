"""Standard Webhooks: Gatehouse's own canonical events, signed the Svix way."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from gatehouse.webhooks.errors import InvalidSignature
from gatehouse.webhooks.senders.base import (
    BaseSender,
    CanonicalEvent,
    Inbound,
    SourceInfo,
    canonical,
    parse_json,
)
from gatehouse.webhooks.signatures import any_signature_matches, check_timestamp, hmac_sha256


def secret_key_bytes(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        # A secret that is not base64 is used as raw bytes, as other implementations do.
        return raw.encode()


class StandardSender(BaseSender):
    kind = "standard"

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None:
        msg_id = inbound.headers.get("webhook-id")
        header = inbound.headers.get("webhook-signature")
        if not msg_id or not header:
            raise InvalidSignature("missing webhook-id or webhook-signature header")
        timestamp = check_timestamp(inbound.headers.get("webhook-timestamp"), tolerance)
        provided = []
        for entry in header.split():
            version, _, value = entry.partition(",")
            if version != "v1":
                continue  # v1a (ed25519) and unknown schemes are ignored
            try:
                provided.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not provided:
            raise InvalidSignature("no v1 signature in webhook-signature")
        signed = f"{msg_id}.{timestamp}.".encode() + inbound.body
        expected = (hmac_sha256(secret_key_bytes(s), signed) for s in source.secrets)
        if not any_signature_matches(expected, provided):
            raise InvalidSignature("signature does not match")

    def parse(self, inbound: Inbound) -> Any:
        return parse_json(inbound.body)

    def translate(self, parsed: Any, inbound: Inbound, source: SourceInfo) -> list[CanonicalEvent]:
        return [
            canonical(
                parsed,
                crm=source.crm,
                external_id=inbound.headers["webhook-id"][:255],
                occurred_at=default_occurred_at(inbound),
            )
        ]


def default_occurred_at(inbound: Inbound) -> datetime:
    """`webhook-timestamp` refined by our receive time: the latest instant inside the header's
    second that is not after we received the event.

    The header has whole seconds while senders without a clock of their own (a Keap
    campaign post) are ordered by their receive time. Taking the start of the second would
    sort an event signed at 10:00:00.999 and received at 10:00:01.001 before a Keap post
    received at 10:00:00.900, although it was sent after it.
    """
    start = datetime.fromtimestamp(int(inbound.headers["webhook-timestamp"]), UTC)
    last_instant = start + timedelta(seconds=1) - timedelta(microseconds=1)
    return max(start, min(inbound.received_at, last_instant))
