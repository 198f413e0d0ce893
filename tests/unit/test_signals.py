"""The scout's signal rules (agents/signals.py) and careers-page reading
(agents/careers.py), without I/O."""

from __future__ import annotations

import datetime as dt

import pytest

from agents import signals
from agents.careers import job_openings
from agents.signals import FilingRecord, JobOpening, filing_signal, job_posting_signal

TODAY = dt.date(2026, 6, 30)


def ago(days: int) -> dt.date:
    return TODAY - dt.timedelta(days=days)


def record(form: str, days: int, category: str = "", description: str = "",
           **values: object) -> FilingRecord:
    return FilingRecord(f"T-{form}-{days}", category, form, ago(days), description, values)


@pytest.mark.parametrize(("days", "strength"), [(0, 0.9), (30, 0.9), (31, 0.7), (90, 0.7),
                                                (91, 0.5), (365, 0.5), (366, 0.2)])
def test_a_share_allotment_is_a_funding_round_by_age(days: int, strength: float) -> None:
    signal = filing_signal(record("SH01", days, "capital", "capital-allotment-shares",
                                  capital=[{"currency": "GBP", "figure": "2,151"}]), TODAY)
    assert signal is not None and signal.type == "funding_round"
    assert signal.strength == strength
    assert signal.source_key == f"ch:T-SH01-{days}"
    assert "GBP 2,151" in signal.title


def test_a_share_allotment_of_the_last_30_days_is_at_least_0_8() -> None:
    assert all(signals.recency_strength("funding_round", ago(d), TODAY) >= 0.8
               for d in range(31))


def test_every_strength_lies_in_0_1_and_weakens_with_age() -> None:
    for bands in signals.STRENGTHS.values():
        assert all(0 <= s <= 1 for s in bands)
        assert list(bands) == sorted(bands, reverse=True)


def test_a_future_date_counts_as_today() -> None:
    assert signals.recency_strength("funding_round", TODAY + dt.timedelta(days=3), TODAY) == 0.9


@pytest.mark.parametrize(("form", "category", "description", "kind", "strength"), [
    ("AP01", "officers", "appoint-person-director-company-with-name-date", "officer_change", 0.7),
    ("TM01", "officers", "termination-director-company-with-name-termination-date",
     "officer_change", 0.5),
    ("AA", "accounts", "accounts-with-accounts-type-full", "accounts_filed", 0.4),
    ("MR01", "mortgage", "mortgage-create-with-deed", "charge_registered", 0.6),
    ("NM01", "change-of-name", "change-of-name-by-resolution", "name_change", 0.5),
])
def test_filings_by_form(form: str, category: str, description: str, kind: str,
                         strength: float) -> None:
    signal = filing_signal(record(form, 3, category, description, officer_name="Jane Roe"),
                           TODAY)
    assert signal is not None
    assert (signal.type, signal.strength) == (kind, strength)


def test_routine_filings_are_no_signal() -> None:
    assert filing_signal(record("CS01", 1, "confirmation-statement"), TODAY) is None
    assert filing_signal(record("AD01", 1, "address"), TODAY) is None


def test_register_dates_are_weaker_and_give_way_to_the_filing_history() -> None:
    found = signals.register_signals(
        accounts_last_made_up=ago(20),
        previous_names=[{"name": "OLD NAME LTD", "changed_on": ago(10).isoformat()}],
        today=TODAY)
    by_type = {s.type: s for s in found}
    assert by_type["accounts_filed"].strength == signals.REGISTER_ACCOUNTS_CAP
    assert by_type["name_change"].strength == 0.5
    assert by_type["name_change"].source_key == f"register:name:{ago(10).isoformat()}"
    assert "OLD NAME LTD" in by_type["name_change"].title
    covered = signals.register_signals(accounts_last_made_up=ago(20), previous_names=[],
                                       today=TODAY, covered=frozenset({"accounts_filed"}))
    assert covered == []


@pytest.mark.parametrize(("count", "strength"), [(1, 0.6), (2, 0.7), (3, 0.8), (4, 0.9),
                                                 (9, 0.9)])
def test_job_posting_strength_grows_with_openings(count: int, strength: float) -> None:
    openings = [JobOpening(f"Role {i}") for i in range(count)]
    signal = job_posting_signal("https://x.example/careers/", openings, TODAY, page_read=True)
    assert signal.strength == strength


def test_a_fresh_posting_adds_and_a_bare_link_is_weak() -> None:
    fresh = [JobOpening("Engineer", ago(3)), JobOpening("Designer", ago(100))]
    assert job_posting_signal("https://x.example/jobs", fresh, TODAY, page_read=True
                              ).strength == 0.8
    bare = job_posting_signal("https://x.example/jobs", [], TODAY, page_read=False)
    assert bare.strength == signals.CAREERS_LINK_ONLY


def test_the_same_page_with_the_same_openings_is_the_same_signal() -> None:
    roles = [JobOpening("A"), JobOpening("B")]
    one = job_posting_signal("http://127.0.0.1:1/site/careers/", roles, TODAY, page_read=True)
    two = job_posting_signal("http://127.0.0.1:2/site/careers/", roles[::-1], TODAY,
                             page_read=True)
    more = job_posting_signal("http://127.0.0.1:1/site/careers/", [*roles, JobOpening("C")],
                              TODAY, page_read=True)
    assert one.source_key == two.source_key != more.source_key


def test_careers_page_openings_from_json_ld_first() -> None:
    html = """<html><head><script type="application/ld+json">
    [{"@type": "JobPosting", "title": "Engineer", "datePosted": "2026-06-01"},
     {"@type": ["JobPosting"], "title": " Sales  Lead ", "datePosted": "nonsense"},
     {"@type": "Organization", "name": "Not a job"}]
    </script></head><body><ul><li>Engineer</li><li>Other</li></ul></body></html>"""
    assert job_openings(html) == [JobOpening("Engineer", dt.date(2026, 6, 1)),
                                  JobOpening("Sales Lead")]


def test_careers_page_openings_from_list_items_outside_navigation() -> None:
    html = """<html><body><nav><ul><li>Home</li></ul></nav><header><li>Menu</li></header>
    <ul><li>Senior engineer</li><li>Account <b>executive</b></li><li>Senior engineer</li>
    <li>""" + "x" * 500 + """</li></ul><footer><ul><li>Privacy</li></ul></footer>
    <script type="application/ld+json">{not json</script></body></html>"""
    assert [o.title for o in job_openings(html)] == ["Senior engineer", "Account executive"]
