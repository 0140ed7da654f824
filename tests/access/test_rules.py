"""The rules file: validation whose errors name the field, and pure evaluation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gatehouse.access.rules import (
    MemberState,
    Rules,
    RulesError,
    SubscriptionState,
    evaluate,
    parse_rules_text,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RULES_TEXT = """
sections: [community, courses, affiliate]
grace: {past_due_days: 3}
public: {grants: [page:public]}
groups:
  - name: gold
    tags: {any: ["keap:101", "keap:102"], none: ["keap:999"]}
    grants: [course:gold, section:courses, section:community]
  - name: pair
    tags: {all: ["keap:201", "hubspot:7"]}
    grants: [course:pair]
  - name: subscriber
    subscriptions: {any: ["prod_gold"]}
    grants: [section:affiliate, course:sub]
"""


def rules() -> Rules:
    return Rules.from_dict(parse_rules_text(RULES_TEXT), version=1)


def state(
    *tags: str,
    status: str = "active",
    all_access: bool = False,
    subs: tuple[SubscriptionState, ...] = (),
) -> MemberState:
    return MemberState(
        status=status, all_access=all_access, tags=frozenset(tags), subscriptions=subs
    )


def errors_of(text: str) -> dict[str, list[str]]:
    with pytest.raises(RulesError) as caught:
        parse_rules_text(text)
    return caught.value.errors


def test_valid_file_parses_with_defaults() -> None:
    parsed = parse_rules_text("groups:\n  - name: g\n    tags: {any: [keap:1]}\n    grants: [x]\n")

    assert parsed["sections"] == []
    assert parsed["grace"] == {"past_due_days": 0}
    assert parsed["public"] == {"grants": []}
    assert parsed["groups"][0]["tags"] == {"any": ["keap:1"], "all": [], "none": []}


def test_unknown_field_is_named_with_its_path() -> None:
    errors = errors_of("groups:\n  - name: g\n    tagz: {any: [keap:1]}\n    grants: [x]\n")

    assert errors["groups.0.tagz"] == ["Unknown field."]


def test_tag_without_namespace_is_named_with_its_path() -> None:
    errors = errors_of("groups:\n  - name: g\n    tags: {any: ['101']}\n    grants: [x]\n")

    assert list(errors) == ["groups.0.tags.any.0"]
    assert "crm:tag" in errors["groups.0.tags.any.0"][0]


def test_group_without_grants_is_named() -> None:
    errors = errors_of("groups:\n  - name: g\n    tags: {any: [keap:1]}\n")

    assert list(errors) == ["groups.0.grants"]


def test_group_without_any_criterion_is_refused() -> None:
    errors = errors_of("groups:\n  - name: everyone\n    grants: [x]\n")

    assert "groups.0.tags" in errors
    assert "public.grants" in errors["groups.0.tags"][0]


def test_duplicate_group_names_are_refused() -> None:
    one = "  - name: g\n    tags: {any: [keap:1]}\n    grants: [x]\n"
    errors = errors_of("groups:\n" + one + one)

    assert errors == {"groups": ["group names must be unique; repeated: g"]}


def test_negative_grace_is_named() -> None:
    assert list(errors_of("grace: {past_due_days: -1}\n")) == ["grace.past_due_days"]


def test_yaml_syntax_error_is_reported_for_the_file() -> None:
    errors = errors_of("groups: [\n")

    assert list(errors) == ["(file)"]
    assert "not valid YAML" in errors["(file)"][0]


def test_top_level_list_is_refused() -> None:
    assert list(errors_of("- a\n- b\n")) == ["(file)"]


def test_any_tag_matches_and_sections_follow_the_configured_order() -> None:
    access = evaluate(rules(), state("keap:102"), NOW)

    assert access.groups == ("gold",)
    assert access.permissions == (
        "course:gold",
        "page:public",
        "section:community",
        "section:courses",
    )
    assert access.sections == ("community", "courses")
    assert access.landing == "community"


def test_none_tag_excludes_the_group() -> None:
    access = evaluate(rules(), state("keap:101", "keap:999"), NOW)

    assert access.groups == ()
    assert access.permissions == ("page:public",)
    assert access.landing is None


def test_all_tags_must_be_present_across_namespaces() -> None:
    assert evaluate(rules(), state("keap:201"), NOW).groups == ()
    assert evaluate(rules(), state("keap:201", "hubspot:7"), NOW).groups == ("pair",)


def test_public_grants_are_given_to_every_active_member() -> None:
    assert "page:public" in evaluate(rules(), state("keap:101"), NOW).permissions
    assert evaluate(rules(), state(), NOW).permissions == ("page:public",)


def test_revoked_member_has_no_permissions_at_all() -> None:
    access = evaluate(rules(), state("keap:101", status="revoked"), NOW)

    assert (access.groups, access.permissions, access.sections, access.landing) == (
        (),
        (),
        (),
        None,
    )


def test_all_access_member_gets_every_group() -> None:
    access = evaluate(rules(), state("keap:999", all_access=True), NOW)

    assert access.groups == ("gold", "pair", "subscriber")
    assert set(access.permissions) == rules().all_grants()


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_subscription_in_good_standing_matches(status: str) -> None:
    sub = SubscriptionState(product="prod_gold", status=status)

    assert evaluate(rules(), state(subs=(sub,)), NOW).groups == ("subscriber",)


@pytest.mark.parametrize(
    "status", ["incomplete", "incomplete_expired", "paused", "unpaid", "canceled"]
)
def test_subscription_not_in_good_standing_does_not_match(status: str) -> None:
    sub = SubscriptionState(product="prod_gold", status=status)

    assert evaluate(rules(), state(subs=(sub,)), NOW).groups == ()


def test_past_due_keeps_access_during_grace_and_says_when_it_ends() -> None:
    since = NOW - timedelta(days=1)
    sub = SubscriptionState(product="prod_gold", status="past_due", past_due_since=since)

    access = evaluate(rules(), state(subs=(sub,)), NOW)

    assert access.groups == ("subscriber",)
    assert access.expires_at == since + timedelta(days=3)


def test_past_due_loses_access_after_grace() -> None:
    since = NOW - timedelta(days=3, seconds=1)
    sub = SubscriptionState(product="prod_gold", status="past_due", past_due_since=since)

    access = evaluate(rules(), state(subs=(sub,)), NOW)

    assert access.groups == ()
    assert access.expires_at is None


def test_subscription_to_another_product_does_not_match() -> None:
    sub = SubscriptionState(product="prod_silver", status="active")

    assert evaluate(rules(), state(subs=(sub,)), NOW).groups == ()


def test_sections_not_listed_in_the_order_come_after_the_listed_ones() -> None:
    text = (
        "sections: [b]\ngroups:\n  - name: g\n    tags: {any: [keap:1]}\n"
        "    grants: [section:z, section:a, section:b]\n"
    )
    access = evaluate(Rules.from_dict(parse_rules_text(text), 1), state("keap:1"), NOW)

    assert access.sections == ("b", "a", "z")
    assert access.landing == "b"
