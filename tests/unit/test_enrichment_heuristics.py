"""The enrichment agent's pure heuristics: employee estimate, growth, industry text."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from agents.companies_house import Officer, OfficerList
from agents.enrichment_agent import (
    EnrichmentConfig,
    estimate_employee_growth,
    estimate_employees,
    industry_description,
)

TODAY = date(2025, 6, 30)


def officers(*spec: tuple[str, str | None], active: int | None = None) -> OfficerList:
    """(appointed_on, resigned_on) pairs."""
    items = [Officer(name=f"O{i}", appointed_on=date.fromisoformat(a),
                     resigned_on=date.fromisoformat(r) if r else None)
             for i, (a, r) in enumerate(spec)]
    count = sum(1 for o in items if o.resigned_on is None) if active is None else active
    return OfficerList(items=items, active_count=count,
                       resigned_count=len(items) - count)


@pytest.mark.parametrize(
    ("category", "active", "expected"),
    [
        ("MICRO ENTITY", 1, 5),        # bulk-file spelling
        ("micro-entity", 1, 5),        # API spelling
        ("total-exemption-full", None, 10),
        ("SMALL", 2, 25),
        ("medium", 3, 120),
        ("FULL", None, 300),
        ("group", 1, 500),
        ("DORMANT", 2, 0),             # officers of a dormant company employ nobody
        ("micro-entity", 12, 12),      # never fewer than the active officers
        ("NO ACCOUNTS FILED", 2, 6),   # no band: three per officer
        (None, 4, 12),
        (None, None, None),
        ("", 0, None),
    ],
)
def test_employee_estimate(category: str | None, active: int | None,
                           expected: int | None) -> None:
    assert estimate_employees(category, active) == expected


def test_growth_is_unknown_without_officer_data() -> None:
    assert estimate_employee_growth(None, today=TODAY) is None


def test_growth_from_net_officer_change_over_the_last_year() -> None:
    # Now: 3 active (one appointed this year). A year ago: 2 + 1 resigned since = 3.
    listing = officers(("2010-01-01", None), ("2012-01-01", None), ("2025-01-15", None),
                       ("2011-01-01", "2025-02-01"))
    assert estimate_employee_growth(listing, today=TODAY) == Decimal("0.0")
    # Two appointed this year, none left: 2 a year ago, 4 now: +100 %.
    listing = officers(("2010-01-01", None), ("2012-01-01", None), ("2025-01-15", None),
                       ("2025-03-01", None))
    assert estimate_employee_growth(listing, today=TODAY) == Decimal("100.0")
    # Three a year ago, two left this year: -66.7 %, clamped to -50.
    listing = officers(("2010-01-01", None), ("2011-01-01", "2025-01-01"),
                       ("2012-01-01", "2025-04-01"))
    assert estimate_employee_growth(listing, today=TODAY) == Decimal("-50.0")
    # Four a year ago, five now.
    listing = officers(*[("2015-01-01", None)] * 4, ("2025-05-01", None))
    assert estimate_employee_growth(listing, today=TODAY) == Decimal("25.0")


def test_growth_of_a_company_with_nobody_a_year_ago() -> None:
    assert estimate_employee_growth(officers(("2025-05-01", None)), today=TODAY) == 100
    assert estimate_employee_growth(officers(), today=TODAY) == 0
    # Appointed and resigned within the year: neither then nor now.
    listing = officers(("2015-01-01", None), ("2025-01-01", "2025-03-01"))
    assert estimate_employee_growth(listing, today=TODAY) == 0


def test_industry_description() -> None:
    assert industry_description(
        ["62012 - Business and domestic software development", "63110 - Data processing"],
        ["62012", "63110"],
    ) == "Business and domestic software development; Data processing"
    assert industry_description([], ["62012"]) == "SIC 62012"
    assert industry_description([" "], []) is None


def test_configuration_defaults_and_validation() -> None:
    config = EnrichmentConfig.model_validate({"unrelated": 1})
    assert (config.concurrency, config.fetch_websites) == (8, None)
    assert config.website.max_bytes == 1024 * 1024
    with pytest.raises(ValueError, match="concurrency"):
        EnrichmentConfig.model_validate({"concurrency": 0})
