"""HubSpot app webhooks: batched JSON arrays signed with X-HubSpot-Signature-v3 (or v1/v2).

Tag-like properties: HubSpot has no tags. A boolean contact property named in
`TAG_PROPERTIES`, or any property called `gatehouse_tag_<name>`, is read as a tag in the
source's namespace: "true" asserts it present, "false"/empty absent. `hs_portal_user`
becomes the tag `hs_portal_user`, `gatehouse_tag_gold` the tag `gold`. List membership
does not reach app webhooks; a HubSpot workflow that sets such a property carries it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gatehouse.webhooks.errors import InvalidEvent, InvalidSignature
from gatehouse.webhooks.senders.base import (
    BaseSender,
    CanonicalEvent,
    Inbound,
    SourceInfo,
    canonical,
    parse_json,
)
from gatehouse.webhooks.signatures import any_signature_matches, check_timestamp, hmac_sha256

TAG_PROPERTIES = frozenset({"hs_portal_user"})
TAG_PROPERTY_PREFIX = "gatehouse_tag_"
PROFILE_PROPERTIES = {"email": "email", "firstname": "first_name", "lastname": "last_name"}
TRUE_VALUES = frozenset({"true", "yes", "1", "on"})
FALSE_VALUES = frozenset({"false", "no", "0", "off", ""})
MAX_BATCH = 1000

# Known HubSpot types Gatehouse has nothing to do with; stored `skipped` with this reason.
IGNORED: dict[str, str] = {
    "contact.restore": "a restored contact carries no tags or profile; later events will",
    "contact.associationChange": "associations do not affect access",
}


class Skipped(Exception):
    """A known event that carries nothing for Gatehouse; the message is the reason."""


def _contact(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(item["objectId"])}


def _creation(item: dict[str, Any]) -> dict[str, Any]:
    contact = _contact(item)
    # Creation events carry no properties unless an app adds them; take what is there.
    props = item.get("properties")
    if isinstance(props, dict):
        for prop, name in PROFILE_PROPERTIES.items():
            value = props.get(prop)
            if isinstance(value, dict):
                value = value.get("value")
            if isinstance(value, str) and value:
                contact[name] = value
    return {"type": "contact.updated", "contact": contact}


def _deletion(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "contact.deleted", "contact": _contact(item)}


def _merge(item: dict[str, Any]) -> dict[str, Any]:
    merged = item.get("mergedObjectIds")
    if item.get("primaryObjectId") is None or not isinstance(merged, list) or not merged:
        raise InvalidEvent(
            {"primaryObjectId": ["contact.merge needs primaryObjectId and mergedObjectIds"]}
        )
    survivor = str(item["primaryObjectId"])
    return {
        "type": "contact.merged",
        "contact": {"id": survivor},
        "merged_ids": [str(m) for m in merged if str(m) != survivor],
    }


def tag_for_property(name: str) -> str | None:
    if name in TAG_PROPERTIES:
        return name
    if name.startswith(TAG_PROPERTY_PREFIX) and len(name) > len(TAG_PROPERTY_PREFIX):
        return name[len(TAG_PROPERTY_PREFIX) :]
    return None


def _property_change(item: dict[str, Any]) -> dict[str, Any]:
    name = item.get("propertyName")
    if not isinstance(name, str) or not name:
        raise InvalidEvent({"propertyName": ["contact.propertyChange needs a propertyName"]})
    value = item.get("propertyValue")
    text = "" if value is None else str(value).strip()
    contact = _contact(item)
    if name in PROFILE_PROPERTIES:
        if not text:
            raise Skipped(f"property {name} was cleared; Gatehouse keeps the last known value")
        contact[PROFILE_PROPERTIES[name]] = text
        return {"type": "contact.updated", "contact": contact}
    tag = tag_for_property(name)
    if tag is None:
        raise Skipped(f"property {name} is not used by Gatehouse")
    if text.lower() in TRUE_VALUES:
        return {"type": "contact.tag_added", "contact": contact, "tag": tag}
    if text.lower() in FALSE_VALUES:
        return {"type": "contact.tag_removed", "contact": contact, "tag": tag}
    raise Skipped(f"property {name} has value {text[:40]!r}, neither true nor false")


TRANSLATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "contact.creation": _creation,
    "contact.deletion": _deletion,
    "contact.privacyDeletion": _deletion,
    "contact.merge": _merge,
    "contact.propertyChange": _property_change,
}


def _occurred_at(item: dict[str, Any], index: int) -> datetime:
    raw = item.get("occurredAt")
    try:
        return datetime.fromtimestamp(int(raw) / 1000, UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        raise InvalidEvent({f"{index}.occurredAt": ["milliseconds since the epoch"]}) from None


def _required(item: Any, index: int) -> None:
    if not isinstance(item, dict):
        raise InvalidEvent({str(index): ["each event must be a JSON object"]})
    missing = [
        f for f in ("eventId", "portalId", "subscriptionType", "objectId") if item.get(f) is None
    ]
    if missing:
        raise InvalidEvent({f"{index}.{f}": ["required"] for f in missing})
    if not isinstance(item["subscriptionType"], str):
        raise InvalidEvent({f"{index}.subscriptionType": ["must be a string"]})


class HubSpotSender(BaseSender):
    kind = "hubspot"
    issued_secret = "your HubSpot app's client secret (app settings → Auth)"
    signs_url = True

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None:
        v3 = inbound.headers.get("x-hubspot-signature-v3")
        if v3:
            timestamp = inbound.headers.get("x-hubspot-request-timestamp")
            check_timestamp(timestamp, tolerance, millis=True)
            try:
                provided = base64.b64decode(v3, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidSignature("X-HubSpot-Signature-v3 is not base64") from None
            # HubSpot signs the URL it called: behind a proxy, GATEHOUSE_PUBLIC_URL's.
            signed = f"{inbound.method}{inbound.url}".encode() + inbound.body
            signed += (timestamp or "").encode()
            expected = (hmac_sha256(s.encode(), signed) for s in source.secrets)
            if not any_signature_matches(expected, [provided]):
                raise InvalidSignature("X-HubSpot-Signature-v3 does not match")
            return
        legacy = inbound.headers.get("x-hubspot-signature")
        if not legacy:
            raise InvalidSignature("missing X-HubSpot-Signature-v3 (or X-HubSpot-Signature)")
        version = (inbound.headers.get("x-hubspot-signature-version") or "v1").strip().lower()
        if version == "v1":
            prefix = b""
        elif version == "v2":
            prefix = f"{inbound.method}{inbound.url}".encode()
        else:
            raise InvalidSignature(f"unsupported X-HubSpot-Signature-Version {version[:8]!r}")
        try:
            got = bytes.fromhex(legacy.strip())
        except ValueError:
            raise InvalidSignature("X-HubSpot-Signature is not hex") from None
        expected_legacy = (
            hashlib.sha256(s.encode() + prefix + inbound.body).digest() for s in source.secrets
        )
        if not any_signature_matches(expected_legacy, [got]):
            raise InvalidSignature("X-HubSpot-Signature does not match")

    def parse(self, inbound: Inbound) -> Any:
        return parse_json(inbound.body)

    def translate(self, parsed: Any, inbound: Inbound, source: SourceInfo) -> list[CanonicalEvent]:
        if not isinstance(parsed, list):
            raise InvalidEvent({"_schema": ["HubSpot posts a JSON array of events"]})
        if len(parsed) > MAX_BATCH:
            raise InvalidEvent({"_schema": [f"at most {MAX_BATCH} events per request"]})
        events = []
        for index, item in enumerate(parsed):
            _required(item, index)
            events.append(self._one(item, index, source))
        return events

    def _one(self, item: dict[str, Any], index: int, source: SourceInfo) -> CanonicalEvent:
        kind: str = item["subscriptionType"]
        external_id = f"{item['portalId']}:{item['eventId']}"[:255]
        when = _occurred_at(item, index)
        reason = None
        translator = TRANSLATORS.get(kind)
        if kind in IGNORED:
            reason = f"HubSpot {kind} is ignored: {IGNORED[kind]}"
        elif translator is not None:
            try:
                data = translator(item)
            except Skipped as exc:
                reason = f"HubSpot {kind}: {exc}"
            except InvalidEvent as exc:
                raise InvalidEvent({f"{index}.{k}": v for k, v in exc.detail.items()}) from None
        if translator is None or reason is not None:
            # Unknown types get canonical()'s reason, which names the type.
            data = {"type": f"hubspot.{kind}"[:64], "contact": _contact(item)}
        event = canonical(
            data,
            crm=source.crm,
            external_id=external_id,
            occurred_at=when,
            field_prefix=f"{index}.",
        )
        if reason is not None:
            event.skip_reason = reason
        return event
