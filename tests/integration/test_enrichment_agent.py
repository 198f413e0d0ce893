"""The enrichment agent end to end: real Postgres, the real executor, the Companies
House stand-in and the fake websites, all on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from agents.enrichment_agent import EnrichmentAgent
from runner.outcomes import Outcome
from runner.plugins import Registry
from tests.harness import run_task_inline, task_state, test_settings
from tests.standins.companies_house import (
    CompaniesHouseStandIn,
    officer,
    running_companies_house,
)
from tests.standins.websites import WebsitesStandIn, running_websites

Conn = psycopg.Connection[tuple[Any, ...]]

REGISTRY = Registry([EnrichmentAgent()])
# Short bounds so the failure cases cost well under a second each.
CONFIGURATION = {
    "concurrency": 4,
    # The stand-in sites live on 127.0.0.1, which production refuses by default.
    "website": {"deadline_seconds": 1.0, "allow_private_addresses": True},
    "companies_house": {"max_attempts": 2, "backoff_base_seconds": 0.01,
                        "backoff_max_seconds": 0.02, "max_rate_limit_wait_seconds": 2},
}
TODAY = date.today()
RECENT = (TODAY - timedelta(days=60)).isoformat()


@pytest.fixture
def ch() -> Iterator[CompaniesHouseStandIn]:
    with running_companies_house(api_key="k") as standin:
        yield standin


@pytest.fixture(scope="module")
def sites() -> Iterator[WebsitesStandIn]:
    with running_websites() as standin:
        standin.slow_seconds = 5.0
        yield standin


def online(ch: CompaniesHouseStandIn, key: str = "k") -> Any:
    return test_settings(COMPANIES_HOUSE_API_KEY=key, COMPANIES_HOUSE_BASE_URL=ch.url)


def add_company(conn: Conn, number: str, name: str, *, website: str | None = None,
                accounts_category: str | None = "SMALL", incorporated: str = "2015-03-02",
                mortgages_outstanding: int = 0) -> str:
    row = conn.execute(
        """
        INSERT INTO companies (company_number, name, website, accounts_category,
                               incorporation_date, mortgages_outstanding, sic_codes, sic_texts,
                               post_town)
        VALUES (%s, %s, %s, %s, %s, %s, '{62012}',
                '{"62012 - Business and domestic software development"}', 'London')
        RETURNING id
        """,
        (number, name, website, accounts_category, incorporated, mortgages_outstanding),
    ).fetchone()
    assert row
    return str(row[0])


def new_stream(conn: Conn, company_ids: list[str]) -> str:
    row = conn.execute("INSERT INTO streams (name) VALUES ('leads') RETURNING id").fetchone()
    assert row
    stream_id = str(row[0])
    for company_id in company_ids:
        conn.execute("INSERT INTO stream_items (stream_id, company_id) VALUES (%s, %s)",
                     (stream_id, company_id))
    return stream_id


def enqueue(conn: Conn, payload: dict[str, Any] | str,
            configuration: dict[str, Any] | None = None) -> str:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, configuration) "
        "VALUES ('enricher', 'enrichment_agent', %s) "
        "ON CONFLICT (org_id, name) DO UPDATE SET configuration = EXCLUDED.configuration",
        (json.dumps(CONFIGURATION if configuration is None else configuration),),
    )
    text = payload if isinstance(payload, str) else json.dumps(payload)
    row = conn.execute("SELECT enqueue_agent_task('enricher', %s::jsonb)", (text,)).fetchone()
    assert row
    return str(row[0])


task = task_state


def items(conn: Conn, stream_id: str) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        """
        SELECT c.company_number, i.enrichment_status, i.enriched_at IS NOT NULL,
               i.buying_signals
        FROM stream_items i JOIN companies c ON c.id = i.company_id
        WHERE i.stream_id = %s
        """,
        (stream_id,),
    ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def company(conn: Conn, number: str) -> dict[str, Any]:
    cur = conn.execute(
        """
        SELECT enrichment_status, enriched_at IS NOT NULL AS enriched_at_set, tech_stack,
               social_score, officers_count, employee_estimate, employee_growth_pct,
               ch_profile, industry_description, buying_signals
        FROM companies WHERE company_number = %s
        """,
        (number,),
    )
    row = cur.fetchone()
    assert row and cur.description
    return dict(zip([c.name for c in cur.description], row, strict=True))


def signal_types(signals: list[dict[str, Any]]) -> set[str]:
    return {s["type"] for s in signals}


@pytest.fixture
def stream(conn: Conn, ch: CompaniesHouseStandIn, sites: WebsitesStandIn) -> str:
    """Seven companies: four with working sites, one whose site hangs, one unknown to
    Companies House, one Companies House keeps failing on, one without a website."""
    ch.add_company("01000001", name="ACME WIDGETS LTD", accounts_type="small", officers=[
        officer("SMITH, Jane", appointed_on="2015-03-02"),
        officer("NEW, Nina", appointed_on=RECENT),
        officer("GONE, Gary", appointed_on="2015-03-02", resigned_on="2016-01-01"),
    ])
    ch.add_company("01000002", name="SHOP LTD", accounts_type="micro-entity",
                   officers=[officer("OWNER, Olive")])
    ch.add_company("01000003", name="SAAS LTD", accounts_type=None,
                   date_of_creation=RECENT, officers=[officer("FOUNDER, Fay",
                                                              appointed_on=RECENT)])
    ch.add_company("01000004", name="SLOW LTD", officers=[officer("SLOW, Sam")])
    ch.add_company("01000006", name="OFFLINE SITE LTD", officers=[officer("BARE, Bo")])
    ch.add_company("01000007", name="FLAKY LTD")
    ch.fail("/company/01000007", status=503, times=None)
    ids = [
        add_company(conn, "01000001", "ACME WIDGETS LTD", website=sites.site_url("wordpress")),
        add_company(conn, "01000002", "SHOP LTD", website=sites.site_url("shop"),
                    mortgages_outstanding=2),
        add_company(conn, "01000003", "SAAS LTD", website=sites.site_url("saas"),
                    accounts_category=None, incorporated=RECENT),
        add_company(conn, "01000004", "SLOW LTD", website=sites.site_url("slow")),
        add_company(conn, "01000005", "GHOST LTD", website=sites.site_url("plain")),
        add_company(conn, "01000006", "OFFLINE SITE LTD"),
        add_company(conn, "01000007", "FLAKY LTD", website=sites.site_url("plain")),
    ]
    return new_stream(conn, ids)


async def test_enriches_a_stream_counting_each_failure_without_failing_the_run(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn, stream: str,
) -> None:
    task_id = enqueue(conn, {"stream_id": stream})
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED

    status, retries, output, error = task(conn, task_id)
    assert (status, retries, error) == ("completed", 0, None)
    assert output == {
        "items_updated": 7, "enriched_count": 5, "not_found_count": 1, "failed_count": 1,
        "website_errors": 1, "reused_count": 0, "mode": "online",
    }
    assert output["items_updated"] == (
        output["enriched_count"] + output["not_found_count"] + output["failed_count"])

    by_number = items(conn, stream)
    assert {n: s[0] for n, s in by_number.items()} == {
        "01000001": "enriched", "01000002": "enriched", "01000003": "enriched",
        "01000004": "enriched", "01000005": "not_found", "01000006": "enriched",
        "01000007": "failed",
    }
    assert by_number["01000007"][1] is False  # a failed item has no enriched_at
    assert all(s[1] for n, s in by_number.items() if n != "01000007")

    acme = company(conn, "01000001")
    assert acme["enrichment_status"] == "enriched" and acme["enriched_at_set"]
    assert {"WordPress", "Cloudflare", "Google Analytics"} <= set(acme["tech_stack"])
    assert float(acme["social_score"]) == pytest.approx(0.55)
    assert acme["officers_count"] == 2
    assert acme["employee_estimate"] == 25  # small-company band
    # Two active officers now, one of them appointed this year: one a year ago, +100 %.
    assert float(acme["employee_growth_pct"]) == 100.0
    assert acme["ch_profile"]["company_name"] == "ACME WIDGETS LTD"
    assert acme["ch_profile"]["undocumented_member"] == {"kept": True}
    assert acme["industry_description"] == "Business and domestic software development"
    assert signal_types(acme["buying_signals"]) == {"hiring", "new_officers", "tech_adoption"}
    assert all(s["agent"] == "enrichment_agent" for s in acme["buying_signals"])
    assert by_number["01000001"][2] == acme["buying_signals"]

    shop = company(conn, "01000002")
    assert "Shopify" in shop["tech_stack"]
    assert shop["employee_estimate"] == 5  # micro-entity
    assert "outstanding_charges" in signal_types(shop["buying_signals"])

    saas = company(conn, "01000003")
    assert {"Next.js", "Stripe", "Intercom", "HubSpot"} <= set(saas["tech_stack"])
    assert saas["employee_estimate"] == 3  # no accounts yet: three per officer
    assert {"hiring", "recent_incorporation"} <= signal_types(saas["buying_signals"])

    slow = company(conn, "01000004")  # the site timed out; Companies House data stays
    assert slow["enrichment_status"] == "enriched"
    assert slow["tech_stack"] == [] and slow["social_score"] is None
    assert slow["ch_profile"]["company_name"] == "SLOW LTD"

    assert company(conn, "01000005")["enrichment_status"] == "not_found"
    assert company(conn, "01000006")["officers_count"] == 1
    flaky = company(conn, "01000007")
    assert flaky["enrichment_status"] == "error" and flaky["ch_profile"] is None

    summary = conn.execute(
        "SELECT results_summary FROM agent_executions WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert summary
    problems = {p["company_number"]: p["error"] for p in summary[0]["problems"]}
    assert problems["01000004"].startswith("website timeout")
    assert "failed after 2 attempts" in problems["01000007"]


async def test_a_second_run_enriches_nothing_new(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn, stream: str,
) -> None:
    first = enqueue(conn, {"stream_id": stream})
    assert await run_task_inline(pool, first, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    before = (items(conn, stream), company(conn, "01000001"), len(ch.requests))

    second = enqueue(conn, {"stream_id": stream})
    assert await run_task_inline(pool, second, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    _, _, output, _ = task(conn, second)
    assert output["items_updated"] == 0 and output["enriched_count"] == 0
    assert (items(conn, stream), company(conn, "01000001"), len(ch.requests)) == before


async def test_invalid_payload_fails_permanently_naming_the_field(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    for payload, field in (('{"stream": "x"}', "stream_id"),
                           ('{"stream_id": "not-a-uuid"}', "stream_id")):
        task_id = enqueue(conn, payload)
        assert await run_task_inline(pool, task_id, registry=REGISTRY) is Outcome.FAILED
        status, retries, _, error = task(conn, task_id)
        assert (status, retries) == ("failed", 0)
        assert field in error


async def test_unknown_stream_fails_permanently(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    task_id = enqueue(conn, {"stream_id": "00000000-0000-0000-0000-00000000abcd"})
    assert await run_task_inline(pool, task_id, registry=REGISTRY) is Outcome.FAILED
    status, _, _, error = task(conn, task_id)
    assert status == "failed" and "stream_id: no stream" in error


async def test_offline_mode_uses_the_local_row_and_calls_nobody(
    conn: Conn, pool: AsyncConnectionPool, sites: WebsitesStandIn,
) -> None:
    ids = [
        add_company(conn, "02000001", "LOCAL LTD", website=sites.site_url("wordpress"),
                    accounts_category="MICRO ENTITY", incorporated=RECENT,
                    mortgages_outstanding=1),
        add_company(conn, "02000002", "DORMANT LTD", accounts_category="DORMANT"),
    ]
    stream_id = new_stream(conn, ids)
    seen = len(sites.requests)
    task_id = enqueue(conn, {"stream_id": stream_id})
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=test_settings()) is Outcome.COMPLETED
    _, _, output, _ = task(conn, task_id)
    assert output["mode"] == "offline"
    assert (output["items_updated"], output["enriched_count"]) == (2, 2)
    assert len(sites.requests) == seen  # no website was fetched
    local = company(conn, "02000001")
    assert local["enrichment_status"] == "enriched"
    assert local["employee_estimate"] == 5
    assert local["employee_growth_pct"] is None and local["ch_profile"] is None
    assert local["tech_stack"] == [] and local["officers_count"] is None
    assert local["industry_description"] == "Business and domestic software development"
    assert signal_types(local["buying_signals"]) == {"outstanding_charges",
                                                     "recent_incorporation"}
    assert company(conn, "02000002")["employee_estimate"] == 0


async def test_offline_mode_fetches_websites_only_when_configured(
    conn: Conn, pool: AsyncConnectionPool, sites: WebsitesStandIn,
) -> None:
    stream_id = new_stream(conn, [
        add_company(conn, "02000003", "SHOPPY LTD", website=sites.site_url("shop")),
    ])
    task_id = enqueue(conn, {"stream_id": stream_id},
                      configuration={**CONFIGURATION, "fetch_websites": True})
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=test_settings()) is Outcome.COMPLETED
    assert "Shopify" in company(conn, "02000003")["tech_stack"]


async def test_stored_filing_history_adds_funding_and_new_officers_offline(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    company_id = add_company(conn, "02000004", "FUNDED LTD")
    old = (TODAY - timedelta(days=400)).isoformat()
    for txid, form, category, filed_on in (
            ("T1", "SH01", "capital", (TODAY - timedelta(days=12)).isoformat()),
            ("T2", "SH01", "capital", (TODAY - timedelta(days=100)).isoformat()),
            ("T3", "AP01", "officers", RECENT),
            ("T4", "SH01", "capital", old),
            ("T5", "CS01", "confirmation-statement", RECENT)):
        conn.execute(
            "INSERT INTO company_filings (company_id, transaction_id, type, category, "
            "filed_on, source) VALUES (%s, %s, %s, %s, %s, 'generated')",
            (company_id, txid, form, category, filed_on))
    stream_id = new_stream(conn, [company_id])
    task_id = enqueue(conn, {"stream_id": stream_id})
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=test_settings()) is Outcome.COMPLETED
    signals = {s["type"]: s for s in company(conn, "02000004")["buying_signals"]}
    assert signals["funding_round"]["strength"] == 0.9  # the newest allotment, 12 days
    assert signals["funding_round"]["count"] == 2  # the 400-day-old one is not counted
    assert signals["funding_round"]["source"] == "companies_house"
    assert signals["new_officers"]["count"] == 1
    assert "recent_incorporation" not in signals


async def test_a_refused_key_fails_the_task_and_leaves_items_pending(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn, stream: str,
) -> None:
    task_id = enqueue(conn, {"stream_id": stream})
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=online(ch, key="wrong")) is Outcome.FAILED
    status, retries, _, error = task(conn, task_id)
    assert (status, retries) == ("failed", 0)
    assert "refused the API key" in error and "Invalid Authorization" in error
    assert "wrong" not in error
    assert {s[0] for s in items(conn, stream).values()} == {"pending"}


async def test_companies_house_down_for_everyone_retries_the_task(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
) -> None:
    stream_id = new_stream(conn, [add_company(conn, "03000001", "A LTD"),
                                  add_company(conn, "03000002", "B LTD")])
    ch.fail("/company/", status=500, times=None)
    task_id = enqueue(conn, {"stream_id": stream_id})
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.RETRY
    status, retries, _, error = task(conn, task_id)
    assert (status, retries) == ("pending", 1)
    assert "unavailable for all 2 companies" in error
    assert {s[0] for s in items(conn, stream_id).values()} == {"pending"}


async def test_other_agents_signals_are_kept_and_recent_enrichment_reused(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn, stream: str,
) -> None:
    conn.execute(
        """UPDATE stream_items SET buying_signals = '[{"type": "x", "source": "derived"}]'
           WHERE stream_id = %s""", (stream,))
    first = enqueue(conn, {"stream_id": stream})
    assert await run_task_inline(pool, first, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    acme_signals = items(conn, stream)["01000001"][2]
    assert {"type": "x", "source": "derived"} in acme_signals
    assert "hiring" in signal_types(acme_signals)

    # The same company in another stream: reused, no new Companies House call.
    acme_id = conn.execute(
        "SELECT id FROM companies WHERE company_number = '01000001'").fetchone()
    assert acme_id
    other = new_stream(conn, [str(acme_id[0])])
    calls = len(ch.requests)
    second = enqueue(conn, {"stream_id": other})
    assert await run_task_inline(pool, second, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    _, _, output, _ = task(conn, second)
    assert (output["enriched_count"], output["reused_count"]) == (1, 1)
    assert len(ch.requests) == calls
    assert "hiring" in signal_types(items(conn, other)["01000001"][2])
