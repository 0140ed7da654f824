"""Billing tests leave no parsed rules behind for the next test (see stripe_helpers.load_rules)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gatehouse.access.state import _rules_cache


@pytest.fixture(autouse=True)
def _forget_parsed_rules() -> Iterator[None]:
    yield
    _rules_cache.clear()
