"""The plain tag change is loaded without the schema's walk, and exactly as the schema would."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from marshmallow import ValidationError

from gatehouse.schemas.events import (
    _plain_tag_change,
    canonical_event_schema,
    load_canonical,
)

# Values around every rule the shape check applies: types, empty, at and over the limits.
VALUES: list[Any] = [
    "gold",
    "",
    "a" * 64,
    "a" * 65,
    "a" * 128,
    "a" * 129,
    " gold ",
    "\u00e9t\u00e9",
    None,
    7,
    True,
    ["gold"],
    {"id": "1"},
]
KINDS = ["contact.tag_added", "contact.tag_removed", "contact.tags_set", "contact.updated", "x"]
CONTACTS: list[Any] = [
    *({"id": value} for value in VALUES),
    {"id": "1", "email": "a@example.com"},
    {"id": "1", "first_name": "Ann"},
    {"id": "1", "crm": "keap"},
    {"email": "a@example.com"},
    {},
    None,
    "1",
]
EXTRA: list[dict[str, Any]] = [{}, {"tags": ["gold"]}, {"occurred_at": None}, {"other": 1}]


def _by_schema(data: dict[str, Any]) -> dict[str, Any] | None:
    try:
        loaded = canonical_event_schema.load(data)
    except ValidationError:
        return None
    return {k: v for k, v in loaded.items() if v is not None}


def test_the_shape_check_accepts_only_what_the_schema_accepts_and_loads_it_alike() -> None:
    taken = 0
    for kind, contact, tag, extra in itertools.product([*KINDS, *VALUES], CONTACTS, VALUES, EXTRA):
        data = {"type": kind, "contact": contact, "tag": tag, **extra}
        fast = _plain_tag_change(data)
        if fast is None:
            continue  # the schema decides, as for every other event
        taken += 1
        by_schema = _by_schema(data)
        assert by_schema is not None, f"the schema refuses {data!r}"
        # Key order included: the payload is stored as this JSON.
        assert json.dumps(fast) == json.dumps(by_schema), data
    assert taken > 50  # the check was exercised, not declined every time


@pytest.mark.parametrize("kind", ["contact.tag_added", "contact.tag_removed"])
@pytest.mark.parametrize("tag", ["gold", "t" * 128])
def test_a_plain_tag_change_takes_the_shape_check(kind: str, tag: str) -> None:
    data = {"type": kind, "contact": {"id": "c" * 128}, "tag": tag}
    fast = _plain_tag_change(data)
    assert fast is not None
    assert json.dumps(fast) == json.dumps(_by_schema(data))
    assert load_canonical(data) == fast


@pytest.mark.parametrize(
    "data",
    [
        {"type": "contact.tag_added", "contact": {"id": "1"}, "tag": ""},
        {"type": "contact.tag_added", "contact": {"id": "1"}, "tag": "t" * 129},
        {"type": "contact.tag_added", "contact": {"id": ""}, "tag": "gold"},
        {"type": "contact.tag_added", "contact": {"id": 1}, "tag": "gold"},
        {"type": "contact.tag_added", "contact": None, "tag": "gold"},
    ],
)
def test_an_invalid_plain_tag_change_is_still_refused_by_the_schema(data: dict[str, Any]) -> None:
    assert _plain_tag_change(data) is None
    with pytest.raises(ValidationError):
        load_canonical(data)
