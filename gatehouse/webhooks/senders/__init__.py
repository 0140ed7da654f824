"""One module per sender kind; `SENDERS` maps a source's kind to its sender."""

from __future__ import annotations

from gatehouse.webhooks.senders.base import BaseSender, CanonicalEvent, Inbound, Sender, SourceInfo
from gatehouse.webhooks.senders.clickfunnels import ClickFunnelsSender
from gatehouse.webhooks.senders.ghl import GhlSender
from gatehouse.webhooks.senders.hubspot import HubSpotSender
from gatehouse.webhooks.senders.keap_http_post import KeapHttpPostSender
from gatehouse.webhooks.senders.keap_rest_hook import KeapRestHookSender
from gatehouse.webhooks.senders.standard import StandardSender
from gatehouse.webhooks.senders.stripe import StripeSender

SENDERS: dict[str, Sender] = {
    sender.kind: sender for sender in (StandardSender(), KeapHttpPostSender())
}
SENDERS[StripeSender.kind] = StripeSender()
for _crm_sender in (HubSpotSender(), GhlSender(), ClickFunnelsSender(), KeapRestHookSender()):
    SENDERS[_crm_sender.kind] = _crm_sender

__all__ = ["SENDERS", "BaseSender", "CanonicalEvent", "Inbound", "Sender", "SourceInfo"]
