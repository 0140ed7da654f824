"""One module per sender kind; `SENDERS` maps a source's kind to its sender."""

from __future__ import annotations

from gatehouse.webhooks.senders.base import BaseSender, CanonicalEvent, Inbound, Sender, SourceInfo
from gatehouse.webhooks.senders.keap_http_post import KeapHttpPostSender
from gatehouse.webhooks.senders.standard import StandardSender
from gatehouse.webhooks.senders.stripe import StripeSender

SENDERS: dict[str, Sender] = {
    sender.kind: sender for sender in (StandardSender(), KeapHttpPostSender())
}
SENDERS[StripeSender.kind] = StripeSender()

__all__ = ["SENDERS", "BaseSender", "CanonicalEvent", "Inbound", "Sender", "SourceInfo"]
