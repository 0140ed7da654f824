"""The Keap REST API behind an interface: handlers ask for a contact, tests serve one locally.

Only workers call it (the receive path must answer fast and never call out).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from flask import current_app

DEFAULT_TIMEOUT = 10.0


class KeapUnavailable(RuntimeError):
    """Keap did not answer usefully; the job raises so RQ retries it."""


@dataclass(frozen=True)
class KeapContact:
    id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    tag_ids: list[str]


class KeapClient(Protocol):
    def get_contact(self, contact_id: str) -> KeapContact | None:
        """The contact with its full tag list, or None if Keap has no such contact."""
        ...


def contact_from_json(data: dict[str, Any]) -> KeapContact:
    emails = data.get("email_addresses") or []
    email = None
    # EMAIL1 is the contact's primary address in Keap.
    for entry in sorted(emails, key=lambda e: e.get("field") != "EMAIL1"):
        if isinstance(entry, dict) and entry.get("email"):
            email = str(entry["email"])
            break
    return KeapContact(
        id=str(data["id"]),
        email=email,
        first_name=data.get("given_name") or None,
        last_name=data.get("family_name") or None,
        tag_ids=[str(t) for t in data.get("tag_ids") or []],
    )


class HttpKeapClient:
    """Keap REST v1 over HTTPS with a Personal Access Token or Service Account Key."""

    def __init__(self, base_url: str, token: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get_contact(self, contact_id: str) -> KeapContact | None:
        url = (
            f"{self.base_url}/contacts/{quote(contact_id, safe='')}"
            "?optional_properties=tag_ids,email_addresses"
        )
        request = urllib.request.Request(  # noqa: S310 - the base URL is the operator's setting
            url,
            headers={"X-Keap-API-Key": self.token, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise KeapUnavailable(f"Keap answered {exc.code} for contact {contact_id}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise KeapUnavailable(f"Keap could not be reached: {exc}") from None
        try:
            data = json.loads(body)
            return contact_from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeapUnavailable(f"Keap's contact {contact_id} is not readable: {exc}") from None


def configured_client() -> KeapClient | None:
    """The client for the configured credentials, or None when none are set."""
    token = current_app.config.get("KEAP_API_TOKEN")
    base_url = current_app.config.get("KEAP_API_BASE_URL")
    if not token or not base_url:
        return None
    return HttpKeapClient(base_url, token)
