"""Keap campaign "HTTP Post": form fields, authenticated by a signed key in the query string."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from itsdangerous import BadSignature, URLSafeSerializer

from gatehouse.models.base import new_id
from gatehouse.webhooks.errors import InvalidEvent, InvalidSignature, MalformedBody
from gatehouse.webhooks.senders.base import (
    BaseSender,
    CanonicalEvent,
    Inbound,
    SourceInfo,
    canonical,
)

COMMANDS = ("genpass", "updateuser", "addtag", "removetag", "revoke")
CONTACT_ID_FIELDS = ("contactid", "id", "contact0id")
KEY_SALT = "gatehouse.hook-key"


def key_serializer(secrets: list[str] | tuple[str, ...]) -> URLSafeSerializer:
    # itsdangerous signs with the last key and accepts any of them.
    return URLSafeSerializer(list(reversed(secrets)), salt=KEY_SALT)


def make_key(secret: str, slug: str, command: str) -> str:
    """The URL key that lets this source trigger exactly this one command."""
    return str(key_serializer([secret]).dumps([slug, command]))


def verify_key(secrets: tuple[str, ...], slug: str, command: str, key: str) -> bool:
    try:
        bound = key_serializer(secrets).loads(key)
    except BadSignature:
        return False
    return bool(bound == [slug, command])


def requested_command(query: Any) -> tuple[str, str]:
    present = [c for c in COMMANDS if c in query]
    if not present:
        raise InvalidSignature(f"no command key in the URL (expected one of {', '.join(COMMANDS)})")
    if len(present) > 1:
        raise InvalidSignature("more than one command key in the URL")
    return present[0], query[present[0]]


class KeapHttpPostSender(BaseSender):
    kind = "keap-http-post"
    media_types = frozenset({"application/x-www-form-urlencoded", ""})

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None:
        command, key = requested_command(inbound.query)
        if not verify_key(source.secrets, source.slug, command, key):
            raise InvalidSignature(f"the key is not valid for {command} on this source")

    def parse(self, inbound: Inbound) -> dict[str, str]:
        try:
            text = inbound.body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBody("form body is not UTF-8") from None
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
        except ValueError as exc:
            raise MalformedBody(f"body is not form data: {exc}") from None
        # Keap's spelling of field names varies by campaign author: match case-insensitively.
        return {name.strip().lower(): value.strip() for name, value in pairs}

    def translate(self, parsed: Any, inbound: Inbound, source: SourceInfo) -> list[CanonicalEvent]:
        command, _ = requested_command(inbound.query)
        form: dict[str, str] = parsed
        contact_id = next((form[f] for f in CONTACT_ID_FIELDS if form.get(f)), None)
        if contact_id is None:
            raise InvalidEvent(
                {"contactId": ["a contact id is required (contactId, Id or Contact0Id)"]}
            )
        contact: dict[str, Any] = {"id": contact_id}
        for form_name, name in (
            ("email", "email"),
            ("firstname", "first_name"),
            ("lastname", "last_name"),
        ):
            if form.get(form_name):
                contact[name] = form[form_name]
        data: dict[str, Any] = {"contact": contact}
        if command in ("genpass", "updateuser"):
            data["type"] = "member.provision" if command == "genpass" else "contact.updated"
            if "groups" in form:
                data["tags"] = [t.strip() for t in form["groups"].split(",") if t.strip()]
            if command == "updateuser":
                data["require_member"] = True
        elif command in ("addtag", "removetag"):
            raw = inbound.query.get("tag") or form.get("tag") or ""
            tags = [t.strip() for t in raw.split(",") if t.strip()]
            if not tags:
                raise InvalidEvent({"tag": ["name the tag(s): ?tag=101,102"]})
            data["type"] = "contact.tag_added" if command == "addtag" else "contact.tag_removed"
            data["tags"] = tags
        else:
            data["type"] = "member.revoked"
        require_member = data.pop("require_member", False)
        # No event id exists: every post is its own event; handlers converge on state.
        event = canonical(
            data, crm=source.crm, external_id=new_id(), occurred_at=inbound.received_at
        )
        if require_member:
            event.payload["require_member"] = True
        return [event]
