"""Reasons a person reads for a lead's score (agents/lead_reasons.py)."""

from __future__ import annotations

from decimal import Decimal

from agents.lead_reasons import lead_reasons

DETAILS = {"criteria": {"active": True, "industry": 1, "location": 1, "employees": 1},
           "employees": 25, "employees_basis": "accounts_category"}


def test_criteria_signals_and_figures_in_order() -> None:
    signals = [
        {"type": "outstanding_charges", "strength": 0.2, "detail": "1 outstanding charges"},
        {"type": "hiring", "strength": 0.4, "detail": "careers page linked: https://x/jobs"},
        {"type": "hiring", "strength": 0.25, "detail": "weaker duplicate"},
        {"type": "tech_adoption", "strength": 0.2, "detail": "uses Stripe"},
        {"type": "accounts_filed_on_time", "strength": 0.1},
        "not an object",
    ]
    assert lead_reasons(DETAILS, signals, enrichment_quality=Decimal("0.8"),
                        data_completeness=Decimal("1.0")) == [
        "meets industry, location and employees (about 25 employees, from the accounts "
        "category)",
        "hiring: careers page linked: https://x/jobs",
        "outstanding charges: 1 outstanding charges",
        "tech adoption: uses Stripe",
        "well enriched (0.8), complete register data (1.0)",
    ]


def test_missed_unknown_and_inactive() -> None:
    details = {"criteria": {"active": True, "industry": 1, "location": 0,
                            "employees": 0.5}}
    assert lead_reasons(details, []) == ["meets industry; misses location; employees unknown"]
    assert lead_reasons({"criteria": {"active": False}}, None) == [
        "no longer active: meets no criteria"]
    assert lead_reasons(None, None, enrichment_quality=0.2) == []
