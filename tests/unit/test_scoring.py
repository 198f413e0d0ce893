"""The scoring formula and its sub-scores, computed by hand (agents/lead_scoring.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from agents import lead_scoring, taxonomy
from agents.lead_scoring import CompanyFacts
from agents.stream_goal import StreamGoal

D = Decimal
TODAY = dt.date(2025, 6, 1)


def make_goal(
    industries: tuple[str, ...] = ("SaaS",),
    locations: tuple[str, ...] = ("UK",),
    employees: tuple[int | None, int | None] | None = (10, 500),
    min_quality: str = "4.0",
) -> StreamGoal:
    location = None
    for name in locations:
        place = taxonomy.lookup_location(name)
        assert place is not None
        location = place if location is None else location | place
    return StreamGoal(
        stream_id=uuid.uuid4(), org_id=uuid.uuid4(), stream_name="test", today=TODAY,
        industries=industries, locations=locations,
        industry=taxonomy.resolve_industries(industries) if industries else None,
        location=location,
        employees_min=employees[0] if employees else None,
        employees_max=employees[1] if employees else None,
        has_employee_range=employees is not None,
        companies_to_find=50, min_quality_score=D(min_quality), ignored_keys=(),
    )


def full_record(**changes: Any) -> CompanyFacts:
    """A London SaaS company with every register field filled, 25 employees (SMALL),
    incorporated long ago, no charges, no enrichment: no signal but accounts on time."""
    values: dict[str, Any] = {
        "name": "ACME SOFTWARE LTD", "status": "Active", "address_line1": "1 CITY ROAD",
        "post_town": "LONDON", "country": "ENGLAND", "postcode": "EC1V 2NX",
        "sic_codes": ["62012"], "incorporation_date": dt.date(2010, 1, 1),
        "accounts_category": "SMALL", "accounts_last_made_up": dt.date(2024, 12, 31),
        "accounts_next_due": dt.date(2025, 9, 30),
        "conf_stmt_last_made_up": dt.date(2025, 1, 1),
    }
    values.update(changes)
    return CompanyFacts(**values)


# The formula ------------------------------------------------------------------------


@pytest.mark.parametrize(("cm", "dc", "eq", "bs", "expected"), [
    ("1", "1", "1", "1", "5.00"),              # the maximum: 2 + 1 + 1 + 1
    ("0", "0", "0", "0", "0.00"),
    ("1", "0.8", "0", "0.6", "3.40"),          # 2.0 + 0.8 + 0 + 0.6
    ("0.5", "0.5", "0.5", "0.5", "2.50"),      # criteria weigh double: 1.0 + 1.5
    ("0.8333", "1", "0", "0", "2.67"),         # 2.6666 rounds half up
    ("0.6667", "0.9", "0.2", "0.25", "2.68"),  # 1.3334 + 0.9 + 0.2 + 0.25 = 2.6834
    ("0.5", "0.1", "0", "0.0025", "1.10"),     # 1.1025 -> 1.10
    ("0.5", "0.1", "0", "0.005", "1.11"),      # 1.105 -> 1.11 (half up, not to even)
])
def test_quality_score(cm: str, dc: str, eq: str, bs: str, expected: str) -> None:
    assert lead_scoring.quality_score(D(cm), D(dc), D(eq), D(bs)) == D(expected)


@pytest.mark.parametrize(("cm", "dc", "eq", "bs", "score", "priority"), [
    ("1", "1", "0.6", "0.9", "4.50", "critical"),     # exactly 4.5
    ("1", "0.9", "0.6", "0.99", "4.49", "high"),      # just below
    ("1", "1", "0", "1", "4.00", "high"),             # exactly 4.0: the discovery ceiling
    ("1", "0.9", "0", "1", "3.90", "medium"),
    ("0.5", "1", "0.99", "1", "3.99", "medium"),      # just below 4.0
    ("0.5", "1", "0", "1", "3.00", "medium"),         # exactly 3.0
    ("0.5", "0.99", "0", "1", "2.99", "low"),         # just below 3.0
    ("1", "1", "1", "1", "5.00", "critical"),
    ("0", "0", "0", "0", "0.00", "low"),
])
def test_score_and_band(cm: str, dc: str, eq: str, bs: str, score: str, priority: str) -> None:
    quality = lead_scoring.quality_score(D(cm), D(dc), D(eq), D(bs))
    assert quality == D(score)
    assert lead_scoring.priority_for(quality) == priority


@pytest.mark.parametrize(("score", "priority"), [
    ("4.5", "critical"), ("4.49", "high"), ("4.0", "high"), ("3.99", "medium"),
    ("3.0", "medium"), ("2.99", "low"), ("5", "critical"), ("0", "low"),
])
def test_band_boundaries(score: str, priority: str) -> None:
    assert lead_scoring.priority_for(D(score)) == priority


# criteria_match ---------------------------------------------------------------------


def test_all_criteria_met() -> None:
    assert lead_scoring.criteria_match(full_record(), make_goal()) == D(1)


def test_two_of_three_criteria() -> None:
    outside_range = full_record(accounts_category="GROUP")  # about 500 employees
    goal = make_goal(employees=(10, 200))
    assert lead_scoring.criteria_credits(outside_range, goal) == (D(1), D(1), D(0))
    assert lead_scoring.criteria_match(outside_range, goal) == D("0.6667")


def test_unknown_headcount_is_half_a_criterion() -> None:
    new_company = full_record(accounts_category="NO ACCOUNTS FILED")
    # (1 + 1 + 0.5) / 3
    assert lead_scoring.criteria_match(new_company, make_goal()) == D("0.8333")


def test_enrichment_headcount_overrides_the_category() -> None:
    enriched = full_record(accounts_category="MICRO ENTITY", employee_estimate=40)
    assert lead_scoring.criteria_match(enriched, make_goal(employees=(10, 50))) == D(1)
    assert lead_scoring.criteria_match(
        full_record(accounts_category="MICRO ENTITY"), make_goal(employees=(10, 50))
    ) == D("0.6667")


def test_open_ended_employee_range() -> None:
    assert lead_scoring.criteria_credits(
        full_record(accounts_category="GROUP"), make_goal(employees=(100, None)))[2] == D(1)
    assert lead_scoring.criteria_credits(
        full_record(accounts_category="MICRO ENTITY"), make_goal(employees=(None, 10)))[2] \
        == D(1)


def test_only_stated_criteria_count() -> None:
    wrong_place = full_record(country="IRELAND", postcode="D02 X285", post_town="DUBLIN 2")
    assert lead_scoring.criteria_match(wrong_place, make_goal()) == D("0.6667")
    assert lead_scoring.criteria_match(wrong_place, make_goal(locations=())) == D(1)
    assert lead_scoring.criteria_match(
        wrong_place, make_goal(industries=(), locations=(), employees=None)) == D(1)
    assert lead_scoring.criteria_match(full_record(sic_codes=["10710"]), make_goal()) \
        == D("0.6667")


@pytest.mark.parametrize("status", ["Dissolved", "Liquidation",
                                    "Active - Proposal to Strike off", None])
def test_a_company_that_is_not_active_meets_no_criteria(status: str | None) -> None:
    assert lead_scoring.criteria_match(full_record(status=status), make_goal()) == D(0)
    assert lead_scoring.criteria_match(
        full_record(status=status), make_goal(industries=(), locations=(), employees=None)
    ) == D(0)


# data_completeness ------------------------------------------------------------------


def test_complete_record() -> None:
    assert lead_scoring.data_completeness(full_record()) == D(1)


def test_each_missing_field_costs_a_tenth() -> None:
    assert lead_scoring.data_completeness(full_record(country="  ")) == D("0.9")
    assert lead_scoring.data_completeness(
        full_record(accounts_category="NO ACCOUNTS FILED", accounts_last_made_up=None)
    ) == D("0.8")
    assert lead_scoring.data_completeness(
        full_record(sic_codes=[], postcode=None, address_line1="", conf_stmt_last_made_up=None)
    ) == D("0.6")
    assert lead_scoring.data_completeness(CompanyFacts()) == D(0)


# enrichment_quality -----------------------------------------------------------------


def test_enrichment_quality_indicators() -> None:
    assert lead_scoring.enrichment_quality(full_record()) == D(0)
    assert lead_scoring.enrichment_quality(full_record(item_enrichment_status="enriched")) \
        == D("0.2")
    assert lead_scoring.enrichment_quality(full_record(
        company_enrichment_status="enriched", website="https://acme.example",
        tech_stack=["React"], officers_count=3, social_score=D("0.4"),
    )) == D(1)
    # presence, not scale: any positive social score is a social presence
    assert lead_scoring.enrichment_quality(full_record(
        website=" ", tech_stack=[], officers_count=0, social_score=D("0.01"))) == D("0.2")


# buying signals ---------------------------------------------------------------------


def _types(facts: CompanyFacts) -> list[str]:
    return [s.type for s in lead_scoring.derived_signals(facts, TODAY)]


def test_a_settled_company_only_files_on_time() -> None:
    assert _types(full_record()) == ["accounts_filed_on_time"]
    assert lead_scoring.buying_signal_score(
        lead_scoring.derived_signals(full_record(), TODAY), 0) == D("0.1")
    overdue = full_record(accounts_next_due=dt.date(2025, 5, 31))
    assert _types(overdue) == []


def test_each_rule() -> None:
    young = full_record(incorporation_date=dt.date(2024, 1, 1))
    assert "recent_incorporation" in _types(young)
    assert "recent_incorporation" not in _types(
        full_record(incorporation_date=TODAY - dt.timedelta(days=730)))
    assert "recent_incorporation" in _types(
        full_record(incorporation_date=TODAY - dt.timedelta(days=729)))
    grown = full_record(accounts_category="MEDIUM",
                        previous_details={"category_employees": 25})
    [upgrade] = [s for s in lead_scoring.derived_signals(grown, TODAY)
                 if s.type == "accounts_category_upgrade"]
    assert upgrade.detail == "accounts category MEDIUM implies about 120 employees, " \
                             "25 when last scored"
    assert "accounts_category_upgrade" not in _types(
        full_record(accounts_category="SMALL", previous_details={"category_employees": 25}))
    assert "new_charge" in _types(
        full_record(mortgages_charges=3, previous_details={"mortgages_charges": 2}))
    assert "new_charge" not in _types(full_record(mortgages_charges=3))  # no history
    assert "outstanding_charges" in _types(full_record(mortgages_outstanding=1))
    assert "headcount_growth" in _types(full_record(employee_growth_pct=D("10")))
    assert "headcount_growth" not in _types(full_record(employee_growth_pct=D("9.99")))
    renamed = full_record(previous_names=[
        {"name": "OLD NAME LTD", "changed_on": "2025-01-15"},
        {"name": "OLDER NAME LTD", "changed_on": "2019-03-01"}])
    [rebrand] = [s for s in lead_scoring.derived_signals(renamed, TODAY)
                 if s.type == "recent_rebrand"]
    assert rebrand.detail == "renamed on 2025-01-15"
    assert "recent_rebrand" not in _types(
        full_record(previous_names=[{"name": "X", "changed_on": "2024-06-01"}]))
    assert "recent_rebrand" not in _types(
        full_record(previous_names=[{"name": "X", "changed_on": "not a date"}, "junk"]))


def test_signals_saturate_at_one() -> None:
    busy = full_record(
        incorporation_date=dt.date(2024, 1, 1), mortgages_outstanding=2,
        employee_growth_pct=D(25),
        previous_names=[{"name": "OLD", "changed_on": "2025-03-01"}])
    signals = lead_scoring.derived_signals(busy, TODAY)
    # 0.3 + 0.2 + 0.3 + 0.2 + 0.1 = 1.1
    assert sum(s.strength for s in signals) == D("1.1")
    assert lead_scoring.buying_signal_score(signals, 0) == D(1)


def test_external_signals_count_once_per_type_and_not_when_a_rule_covers_them() -> None:
    facts = full_record(
        company_signals=[{"type": "hiring", "source": "website"},
                         {"type": "recently_incorporated", "source": "register"},
                         {"type": "charges", "source": "register"}],
        item_signals=[{"type": "hiring", "source": "website"},
                      {"type": "new_officers", "source": "companies_house"},
                      {"type": "outstanding_charges", "source": "derived"}],
    )
    assert lead_scoring.external_signal_count(facts) == 2  # hiring, new_officers
    # 0.1 (accounts on time) + 2 x 0.25
    assert lead_scoring.buying_signal_score(
        lead_scoring.derived_signals(facts, TODAY),
        lead_scoring.external_signal_count(facts)) == D("0.6")


# the whole card ---------------------------------------------------------------------


def test_score_card_of_a_discovery_candidate() -> None:
    card = lead_scoring.score(full_record(mortgages_outstanding=1), make_goal())
    # 2 x 1 + 1.0 + 0 + (0.2 + 0.1)
    assert (card.criteria_match, card.data_completeness, card.enrichment_quality,
            card.buying_signal_score) == (D(1), D(1), D(0), D("0.3"))
    assert card.quality_score == D("3.30") and card.priority == "medium"


def test_enrichment_is_needed_for_critical() -> None:
    busy: dict[str, Any] = {
        "incorporation_date": dt.date(2024, 1, 1), "mortgages_outstanding": 2,
        "employee_growth_pct": D(50),
        "previous_names": [{"name": "OLD", "changed_on": "2025-03-01"}],
    }
    before = lead_scoring.score(full_record(**busy), make_goal())
    # every criterion, every register field, saturated signals, nothing enriched
    assert before.quality_score == D("4.00") and before.priority == "high"
    after = lead_scoring.score(
        full_record(**busy, item_enrichment_status="enriched",
                    website="https://acme.example", tech_stack=["Stripe"], officers_count=2),
        make_goal())
    assert after.enrichment_quality == D("0.8")
    assert after.quality_score == D("4.80") and after.priority == "critical"
