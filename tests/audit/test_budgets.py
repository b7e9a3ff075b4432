"""Attacker budgets: parsing, ordering, errors."""

from __future__ import annotations

import pytest

from lora_patch_adapters.audit.budgets import DEFAULT_BUDGETS, Budget, parse_budgets


def test_parse_orders_by_image_passes_and_defaults_to_one_epoch():
    budgets = parse_budgets("1000x3, 250,1000x1")
    assert budgets == [Budget(250, 1), Budget(1000, 1), Budget(1000, 3)]
    assert [b.key for b in budgets] == ["250x1", "1000x1", "1000x3"]
    assert budgets[2].image_passes == 3000


def test_default_budgets_hold_the_papers_around_smaller_and_larger():
    budgets = parse_budgets(DEFAULT_BUDGETS)
    assert Budget(1000, 1) in budgets
    assert budgets[0].image_passes < 1000 < budgets[-1].image_passes


@pytest.mark.parametrize("text, message", [
    ("", "No attacker budget"), ("ten", "IMAGESxEPOCHS"), ("0", "positive"), ("10x0", "positive"),
    ("8,8x1", "Repeated"), ("-5", "IMAGESxEPOCHS"),
])
def test_bad_budgets_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_budgets(text)


def test_budget_rejects_non_integers():
    with pytest.raises(ValueError, match="images must be a positive integer"):
        Budget(2.5)  # type: ignore[arg-type]
