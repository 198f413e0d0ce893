"""The demo's bundled sources of enrichment: generated filing histories
(agents/companies_generator.py) and the local company websites (agents/demo_sites.py)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import httpx
import pytest

from agents import demo_sites
from agents.careers import job_openings
from agents.companies_generator import filing_history
from agents.signals import FilingRecord, filing_signal
from agents.website import analyse_page, fetch_page, website_client

TODAY = dt.date(2026, 6, 30)


def history(number: str, sic: str = "62012", as_of: dt.date = TODAY) -> list[dict[str, object]]:
    return filing_history(number, incorporated=dt.date(2015, 3, 2), accounts_category="SMALL",
                          accounts_last_made_up=dt.date(2025, 3, 31),
                          conf_stmt_last_made_up=dt.date(2026, 1, 10), sic_codes=[sic],
                          as_of=as_of, seed=7)


def test_filing_histories_are_deterministic_api_shaped_and_never_in_the_future() -> None:
    items = history("01234567")
    assert items == history("01234567")
    other = {i["transaction_id"] for i in history("01234568")}
    assert not other & {i["transaction_id"] for i in items}
    assert [i["date"] for i in items] == sorted((i["date"] for i in items), reverse=True)
    for item in items:
        assert set(item) >= {"category", "date", "type", "description", "description_values",
                             "transaction_id"}
        assert str(item["date"]) <= TODAY.isoformat()
    assert {"NEWINC", "AP01", "AA", "CS01"} <= {i["type"] for i in items}
    assert len({i["transaction_id"] for i in items}) == len(items)


def test_software_companies_raise_money_more_often_and_recently() -> None:
    def allotments(sic: str) -> int:
        return sum(1 for n in range(400) for i in history(f"{n:08d}", sic)
                   if i["type"] == "SH01")
    software, retail = allotments("62012"), allotments("47190")
    assert software > 2 * retail > 0
    recent = [filing_signal(FilingRecord(str(i["transaction_id"]), str(i["category"]),
                                         str(i["type"]), dt.date.fromisoformat(str(i["date"])),
                                         str(i["description"])), TODAY)
              for n in range(200) for i in history(f"{n:08d}") if i["type"] == "SH01"]
    assert all(s is not None and s.strength >= 0.7 for s in recent)


def test_site_kinds_follow_the_sector() -> None:
    kinds = Counter(demo_sites.site_profile(f"{n:08d}", ["62012"], seed=7).kind
                    for n in range(1000))
    others = Counter(demo_sites.site_profile(f"{n:08d}", ["47190"], seed=7).kind
                     for n in range(1000))
    assert set(kinds) == {"rich", "basic", "parked", "missing"}
    assert kinds["rich"] > others["rich"]
    assert demo_sites.site_profile("00000042", ["62012"], seed=7) == \
        demo_sites.site_profile("00000042", ["62012"], seed=7)


@pytest.fixture
def rich_number() -> str:
    return next(f"{n:08d}" for n in range(1000)
                if (p := demo_sites.site_profile(f"{n:08d}", ["62012"], seed=7)).kind == "rich"
                and p.openings)


async def test_the_sites_are_served_and_read_like_real_ones(rich_number: str) -> None:
    parked = next(f"{n:08d}" for n in range(1000) if demo_sites.site_profile(
        f"{n:08d}", ["62012"], seed=7).kind == "parked")
    companies = {rich_number: ("RICH CO LTD", ["62012"]), parked: ("PARKED LTD", ["62012"])}
    with demo_sites.serve_demo_sites(companies, seed=7, today=TODAY) as base:
        assert base.startswith("http://127.0.0.1:") and base.endswith("/demo-sites/")
        async with website_client() as web:
            home = await fetch_page(web, f"{base}{rich_number}/", allow_private_addresses=True)
            analysis = analyse_page(home)
            profile = demo_sites.site_profile(rich_number, ["62012"], seed=7)
            assert set(profile.stack) <= set(analysis.tech_stack)
            assert "linkedin" in analysis.social_links
            assert analysis.hiring_links == (f"{base}{rich_number}/careers/",)
            careers = await fetch_page(web, analysis.hiring_links[0],
                                       allow_private_addresses=True)
            openings = job_openings(careers.html)
            assert sorted(o.title for o in openings) == sorted(r for r, _ in profile.openings)
            assert all(o.date_posted is not None for o in openings)
            plain = analyse_page(await fetch_page(web, f"{base}{parked}/",
                                                  allow_private_addresses=True))
            assert plain.tech_stack == [] and plain.hiring_links == ()
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{base}99999999/")).status_code == 404
                assert (await client.get(f"{base}{parked}/careers/")).status_code == 404
