"""The access rules file and its evaluation, as pure functions of a member's state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

GOOD_STANDING = frozenset({"active", "trialing"})
NAMESPACED = validate.Regexp(
    r"^[^:\s]+:\S+$", error="must be namespaced as 'crm:tag', e.g. keap:101"
)
_name = validate.Length(min=1, max=128)


class TagCriteriaSchema(Schema):
    class Meta:
        unknown = RAISE

    any = fields.List(fields.String(validate=NAMESPACED), load_default=list)
    all = fields.List(fields.String(validate=NAMESPACED), load_default=list)
    none = fields.List(fields.String(validate=NAMESPACED), load_default=list)


class SubscriptionCriteriaSchema(Schema):
    class Meta:
        unknown = RAISE

    any = fields.List(fields.String(validate=_name), required=True)


class GroupSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=_name)
    tags = fields.Nested(TagCriteriaSchema, load_default=None)
    subscriptions = fields.Nested(SubscriptionCriteriaSchema, load_default=None)
    grants = fields.List(
        fields.String(validate=_name), required=True, validate=validate.Length(min=1)
    )

    @validates_schema
    def _has_criterion(self, data: dict[str, Any], **_: Any) -> None:
        tags = data.get("tags") or {}
        if not any(tags.get(k) for k in ("any", "all", "none")) and not data.get("subscriptions"):
            raise ValidationError(
                "a group needs at least one criterion (tags or subscriptions); "
                "use `public.grants` for what everyone may see",
                "tags",
            )


class GraceSchema(Schema):
    class Meta:
        unknown = RAISE

    past_due_days = fields.Integer(load_default=0, validate=validate.Range(min=0, max=365))


class PublicSchema(Schema):
    class Meta:
        unknown = RAISE

    grants = fields.List(fields.String(validate=_name), load_default=list)


class RulesSchema(Schema):
    class Meta:
        unknown = RAISE

    sections = fields.List(fields.String(validate=_name), load_default=list)
    grace = fields.Nested(GraceSchema, load_default=lambda: {"past_due_days": 0})
    public = fields.Nested(PublicSchema, load_default=lambda: {"grants": []})
    groups = fields.List(fields.Nested(GroupSchema), load_default=list)

    @validates_schema
    def _unique_group_names(self, data: dict[str, Any], **_: Any) -> None:
        names = [g["name"] for g in data.get("groups", [])]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValidationError(
                f"group names must be unique; repeated: {', '.join(dupes)}", "groups"
            )


class RulesError(ValueError):
    """The rules file is not valid; `errors` maps dotted field paths to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        lines = [f"{path}: {'; '.join(msgs)}" for path, msgs in sorted(errors.items())]
        super().__init__("\n".join(lines))


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                path = prefix or "(file)"
            out.update(_flatten(value, path))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.setdefault(prefix or "(file)", []).extend(messages)
    elif isinstance(messages, list):
        for i, value in enumerate(messages):
            out.update(_flatten(value, f"{prefix}[{i}]"))
    else:
        out.setdefault(prefix or "(file)", []).append(str(messages))
    return out


def parse_rules_text(text: str) -> dict[str, Any]:
    """YAML text -> validated rules dict (JSON-serialisable); raises RulesError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError({"(file)": [f"not valid YAML: {exc}"]}) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError({"(file)": ["the rules file must be a mapping with sections, groups …"]})
    try:
        loaded: dict[str, Any] = RulesSchema().load(data)
    except ValidationError as exc:
        raise RulesError(_flatten(exc.messages)) from None
    return loaded


@dataclass(frozen=True)
class Group:
    name: str
    tags_any: frozenset[str]
    tags_all: frozenset[str]
    tags_none: frozenset[str]
    products_any: frozenset[str] | None
    grants: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    version: int
    sections: tuple[str, ...]
    past_due_days: int
    public_grants: tuple[str, ...]
    groups: tuple[Group, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], version: int) -> Rules:
        groups = []
        for g in data.get("groups", []):
            tags = g.get("tags") or {}
            subs = g.get("subscriptions")
            groups.append(
                Group(
                    name=g["name"],
                    tags_any=frozenset(tags.get("any", [])),
                    tags_all=frozenset(tags.get("all", [])),
                    tags_none=frozenset(tags.get("none", [])),
                    products_any=frozenset(subs["any"]) if subs else None,
                    grants=tuple(g["grants"]),
                )
            )
        return cls(
            version=version,
            sections=tuple(data.get("sections", [])),
            past_due_days=int((data.get("grace") or {}).get("past_due_days", 0)),
            public_grants=tuple((data.get("public") or {}).get("grants", [])),
            groups=tuple(groups),
        )

    def all_grants(self) -> frozenset[str]:
        return frozenset(p for g in self.groups for p in g.grants) | frozenset(self.public_grants)


EMPTY_RULES = Rules(version=0, sections=(), past_due_days=0, public_grants=(), groups=())


@dataclass(frozen=True)
class SubscriptionState:
    product: str | None
    status: str
    past_due_since: datetime | None = None


@dataclass(frozen=True)
class MemberState:
    status: str  # active | revoked | merged
    all_access: bool
    tags: frozenset[str]  # "crm:tag" of live contacts
    subscriptions: tuple[SubscriptionState, ...] = ()


@dataclass(frozen=True)
class Access:
    groups: tuple[str, ...]
    permissions: tuple[str, ...]
    sections: tuple[str, ...]
    landing: str | None
    # The earliest future moment the answer changes by itself (a grace period ending).
    expires_at: datetime | None = field(default=None)


def in_good_standing(sub: SubscriptionState, rules: Rules, now: datetime) -> bool:
    if sub.status in GOOD_STANDING:
        return True
    if sub.status == "past_due" and sub.past_due_since is not None:
        return now < sub.past_due_since + timedelta(days=rules.past_due_days)
    return False


def grace_ends(subs: Iterable[SubscriptionState], rules: Rules, now: datetime) -> datetime | None:
    ends = [
        s.past_due_since + timedelta(days=rules.past_due_days)
        for s in subs
        if s.status == "past_due" and s.past_due_since is not None
    ]
    future = [e for e in ends if e > now]
    return min(future) if future else None


def group_matches(group: Group, state: MemberState, good_products: frozenset[str]) -> bool:
    if group.tags_any and not (group.tags_any & state.tags):
        return False
    if group.tags_all and not group.tags_all <= state.tags:
        return False
    if group.tags_none & state.tags:
        return False
    return not (group.products_any is not None and not (group.products_any & good_products))


def evaluate(rules: Rules, state: MemberState, now: datetime) -> Access:
    if state.status != "active":
        return Access(groups=(), permissions=(), sections=(), landing=None)
    good = frozenset(
        s.product for s in state.subscriptions if s.product and in_good_standing(s, rules, now)
    )
    if state.all_access:
        matched = [g for g in rules.groups]
    else:
        matched = [g for g in rules.groups if group_matches(g, state, good)]
    permissions = set(rules.public_grants)
    for group in matched:
        permissions.update(group.grants)
    granted_sections = {p.split(":", 1)[1] for p in permissions if p.startswith("section:")}
    ordered = [s for s in rules.sections if s in granted_sections]
    ordered += sorted(granted_sections - set(ordered))
    return Access(
        groups=tuple(g.name for g in matched),
        permissions=tuple(sorted(permissions)),
        sections=tuple(ordered),
        landing=ordered[0] if ordered else None,
        expires_at=grace_ends(state.subscriptions, rules, now),
    )
