"""One exception per answer of the receiving pipeline; each carries its status and code."""

from __future__ import annotations

from typing import Any


class HookError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code}
        if self.detail is not None:
            body["detail"] = self.detail
        return body


class UnknownSource(HookError):
    status, code = 404, "unknown_source"


class BodyTooLarge(HookError):
    status, code = 413, "body_too_large"


class UnsupportedMediaType(HookError):
    status, code = 415, "unsupported_media_type"


class InvalidSignature(HookError):
    """Missing, malformed or wrong signature or key, or a stale timestamp."""

    status, code = 401, "invalid_signature"


class MalformedBody(HookError):
    status, code = 400, "malformed_body"


class InvalidEvent(HookError):
    """Parsed, but not a valid event for this kind; detail maps field -> messages."""

    status, code = 422, "invalid_event"


class Unavailable(HookError):
    status, code = 503, "unavailable"
