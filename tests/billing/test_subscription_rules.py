"""`subscriptions.any` groups and good standing, as pure functions of a member's state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gatehouse.access.rules import MemberState, Rules, SubscriptionState, evaluate, parse_rules_text

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RULES = Rules.from_dict(
    parse_rules_text(
        """
grace: {past_due_days: 3}
public: {grants: [page:public]}
groups:
  - name: gold
    subscriptions: {any: [prod_gold, prod_gold_yearly]}
    grants: [course:gold]
  - name: vip
    tags: {any: ["keap:101"]}
    subscriptions: {any: [prod_vip]}
    grants: [course:vip]
"""
    ),
    version=1,
)


def member(*subs: SubscriptionState, tags: frozenset[str] = frozenset()) -> MemberState:
    return MemberState(status="active", all_access=False, tags=tags, subscriptions=subs)


@pytest.mark.parametrize(
    ("status", "since", "groups"),
    [
        ("active", None, ("gold",)),
        ("trialing", None, ("gold",)),
        ("past_due", NOW - timedelta(days=3) + timedelta(seconds=1), ("gold",)),
        ("past_due", NOW - timedelta(days=3), ()),
        ("incomplete", None, ()),
        ("incomplete_expired", None, ()),
        ("paused", None, ()),
        ("unpaid", None, ()),
        ("canceled", None, ()),
    ],
)
def test_good_standing_decides_subscription_groups(
    status: str, since: datetime | None, groups: tuple[str, ...]
) -> None:
    access = evaluate(RULES, member(SubscriptionState("prod_gold", status, since)), NOW)
    assert access.groups == groups


def test_grace_end_is_reported_as_the_answers_expiry() -> None:
    since = NOW - timedelta(days=1)
    access = evaluate(RULES, member(SubscriptionState("prod_gold", "past_due", since)), NOW)
    assert access.expires_at == since + timedelta(days=3)


def test_any_listed_product_matches() -> None:
    access = evaluate(RULES, member(SubscriptionState("prod_gold_yearly", "active")), NOW)
    assert access.groups == ("gold",)


def test_tags_and_subscriptions_must_both_hold() -> None:
    vip_sub = SubscriptionState("prod_vip", "active")
    assert evaluate(RULES, member(vip_sub), NOW).groups == ()
    both = member(vip_sub, tags=frozenset({"keap:101"}))
    assert evaluate(RULES, both, NOW).groups == ("vip",)
