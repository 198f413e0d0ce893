"""The scout agent (seed 004, example 2) end to end: real Postgres, the real executor,
the Companies House stand-in with filing histories and the fake websites with careers
pages, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from agents.scout_agent import ScoutAgent
from runner.outcomes import Outcome
from runner.plugins import Registry
from tests.harness import (
    REPO,
    daemon_env,
    daemons,
    run_task_inline,
    task_state,
    test_settings,
    wait_until,
)
from tests.standins.companies_house import (
    CompaniesHouseStandIn,
    filing,
    running_companies_house,
)
from tests.standins.websites import WebsitesStandIn, running_websites

Conn = psycopg.Connection[tuple[Any, ...]]

REGISTRY = Registry([ScoutAgent()])
TODAY = date.today()


def days_ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


# Seed 004, example 2, as written: a scout_agent named "Daily Signal Scout", daily at
# 9 AM, looking for job postings and funding rounds at or above 0.7. The one key added:
# the stand-in websites live on 127.0.0.1, which production refuses by default.
SEED_CONFIGURATION: dict[str, Any] = {
    "signals": ["job_posting", "funding_round"],
    "threshold": 0.7,
    "website": {"deadline_seconds": 2.0, "allow_private_addresses": True},
}
FAST_CH = {"max_attempts": 2, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02,
           "max_rate_limit_wait_seconds": 2}


@pytest.fixture
def ch() -> Iterator[CompaniesHouseStandIn]:
    with running_companies_house(api_key="k") as standin:
        yield standin


@pytest.fixture(scope="module")
def sites() -> Iterator[WebsitesStandIn]:
    with running_websites() as standin:
        yield standin


def online(ch: CompaniesHouseStandIn) -> Any:
    return test_settings(COMPANIES_HOUSE_API_KEY="k", COMPANIES_HOUSE_BASE_URL=ch.url)


def add_company(conn: Conn, number: str, name: str, *, website: str | None = None,
                accounts_last_made_up: str | None = None) -> str:
    row = conn.execute(
        "INSERT INTO companies (company_number, name, website, accounts_last_made_up) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        (number, name, website, accounts_last_made_up),
    ).fetchone()
    assert row
    return str(row[0])


@pytest.fixture
def companies(conn: Conn, ch: CompaniesHouseStandIn, sites: WebsitesStandIn) -> dict[str, str]:
    """Five companies: what each one's filings and careers page are worth is noted."""
    ch.add_company("01000001", name="ACME WIDGETS LTD", filings=[
        filing("SH01", days_ago(10), transaction_id="ACME-SH01"),   # funding 0.9: insight
        filing("AP01", days_ago(10), transaction_id="ACME-AP01"),   # officer: not asked for
        filing("AA", days_ago(5), transaction_id="ACME-AA"),        # accounts: not asked for
        filing("CS01", days_ago(3), transaction_id="ACME-CS01"),    # not a signal
    ])
    ch.add_company("02000002", name="HIRING CO LTD", filings=[
        filing("SH01", days_ago(200), transaction_id="HIRE-SH01-OLD"),  # 0.5: below
        filing("SH01", days_ago(60), transaction_id="HIRE-SH01"),       # 0.7: insight
    ])
    ch.add_company("03000003", name="SMALL CO LTD", filings=[
        filing("SH01", days_ago(500), transaction_id="SMALL-SH01"),  # past the lookback
    ])
    ch.add_company("04000004", name="PLAIN LTD", filings=[
        filing("CS01", days_ago(20), transaction_id="PLAIN-CS01"),
    ])
    return {
        # careers page with two roles as list items: 0.7, an insight
        "01000001": add_company(conn, "01000001", "ACME WIDGETS LTD",
                                website=sites.site_url("wordpress")),
        # three schema.org JobPostings: 0.8, an insight
        "02000002": add_company(conn, "02000002", "HIRING CO LTD",
                                website=sites.site_url("hiring")),
        # one role: 0.6, below the threshold
        "03000003": add_company(conn, "03000003", "SMALL CO LTD",
                                website=sites.site_url("small")),
        # no careers page, no signal filing
        "04000004": add_company(conn, "04000004", "PLAIN LTD",
                                website=sites.site_url("plain")),
        # unknown to Companies House, no website
        "05000005": add_company(conn, "05000005", "GHOST LTD"),
    }


def create_seed_scout(conn: Conn, configuration: dict[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, schedule_cron, configuration) "
        "VALUES ('Daily Signal Scout', 'scout_agent', '0 9 * * *', %s)",
        (json.dumps({**SEED_CONFIGURATION, "companies_house": FAST_CH, **(configuration or {})}),),
    )


def enqueue(conn: Conn, payload: dict[str, Any] | None = None) -> str:
    row = conn.execute("SELECT enqueue_agent_task('Daily Signal Scout', %s::jsonb)",
                       (json.dumps(payload or {}),)).fetchone()
    assert row
    return str(row[0])


def insights(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT c.company_number, i.metadata #>> '{signal,type}', "
        "(i.metadata #>> '{signal,strength}')::numeric, i.kind, i.stream_id, i.title "
        "FROM stream_insights i JOIN companies c ON c.id = i.company_id "
        "ORDER BY 1, 2").fetchall()


EXPECTED = [
    ("01000001", "funding_round", 0.9),
    ("01000001", "job_posting", 0.7),
    ("02000002", "funding_round", 0.7),
    ("02000002", "job_posting", 0.8),
]


async def test_seed_example_2_writes_each_signal_once(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
    companies: dict[str, str],
) -> None:
    create_seed_scout(conn)
    first = enqueue(conn)
    assert await run_task_inline(pool, first, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    status, retries, output, error = task_state(conn, first)
    assert (status, retries, error) == ("completed", 0, None)
    assert output == {
        "companies_checked": 5, "signals_found": 6, "signals_above_threshold": 4,
        "insights_created": 4, "companies_failed": 0, "mode": "online",
    }
    rows = insights(conn)
    assert [(n, t, float(s)) for n, t, s, *_ in rows] == EXPECTED
    assert {kind for *_, kind, _stream, _title in rows} == {"signal"}
    # The scout watches all companies (no stream of its own): no stream on the rows.
    assert {stream for *_, stream, _title in rows} == {None}
    titles = {row[-1] for row in rows}
    assert "ACME WIDGETS LTD: Hiring: 2 openings (Account executive, Senior engineer)" in titles
    assert f"ACME WIDGETS LTD: Share allotment filed on {days_ago(10)} (GBP 2,151)" in titles
    assert ("HIRING CO LTD: Hiring: 3 openings (Data Analyst, Head of Sales, Platform "
            "Engineer)") in titles
    # Evidence for the reader: the filing and the page.
    acme_funding = conn.execute(
        "SELECT metadata, body, task_id::text FROM stream_insights "
        "WHERE metadata #>> '{signal,transaction_id}' = 'ACME-SH01'").fetchone()
    assert acme_funding is not None
    metadata, body, task_id = acme_funding
    assert metadata["signal"]["form"] == "SH01" and metadata["company_number"] == "01000001"
    assert "allotment of shares" in body and "strength 0.90" in body
    assert task_id == first
    # What was read from Companies House is kept (the offline mode reads it).
    assert conn.execute("SELECT count(*) FROM company_filings").fetchone() == (8,)
    # One filing-history request per company, basic auth as the API wants.
    assert sorted(p for p in ch.paths() if p.endswith("/filing-history")) == [
        f"/company/0{i}00000{i}/filing-history" for i in range(1, 6)]

    # A second manual run: the same filings and pages, nothing new.
    second = enqueue(conn)
    assert await run_task_inline(pool, second, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    _, _, output, _ = task_state(conn, second)
    assert output["insights_created"] == 0 and output["signals_above_threshold"] == 4
    assert len(insights(conn)) == 4

    # Offline (no key), from the stored filings: the same filings, still nothing new.
    third = enqueue(conn)
    assert await run_task_inline(pool, third, registry=REGISTRY,
                                 settings=test_settings()) is Outcome.COMPLETED
    _, _, output, _ = task_state(conn, third)
    assert output["mode"] == "offline" and output["insights_created"] == 0
    assert len(insights(conn)) == 4


async def test_a_new_filing_or_new_openings_are_new_signals(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
    companies: dict[str, str],
) -> None:
    create_seed_scout(conn, {"signals": ["funding_round"]})
    task_id = enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    assert len(insights(conn)) == 2
    ch.filings["04000004"].append(filing("SH01", days_ago(1), transaction_id="PLAIN-SH01"))
    task_id = enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    assert task_state(conn, task_id)[2]["insights_created"] == 1
    assert [(n, t) for n, t, *_ in insights(conn)] == [
        ("01000001", "funding_round"), ("02000002", "funding_round"),
        ("04000004", "funding_round")]


async def test_concurrent_scouts_write_a_signal_once(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
    companies: dict[str, str],
) -> None:
    create_seed_scout(conn)
    tasks = [enqueue(conn), enqueue(conn)]
    outcomes = await asyncio.gather(*(
        run_task_inline(pool, t, registry=REGISTRY, settings=online(ch)) for t in tasks))
    assert list(outcomes) == [Outcome.COMPLETED, Outcome.COMPLETED]
    created = [task_state(conn, t)[2]["insights_created"] for t in tasks]
    assert sum(created) == 4
    assert [(n, t, float(s)) for n, t, s, *_ in insights(conn)] == EXPECTED


async def test_a_stream_scope_watches_only_the_stream_and_names_it(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
    companies: dict[str, str],
) -> None:
    create_seed_scout(conn)
    row = conn.execute("INSERT INTO streams (name) VALUES ('watch') RETURNING id").fetchone()
    assert row
    stream_id = str(row[0])
    for number in ("02000002", "03000003"):
        conn.execute("INSERT INTO stream_items (stream_id, company_id) VALUES (%s, %s)",
                     (stream_id, companies[number]))
    task_id = enqueue(conn, {"stream_id": stream_id})
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    output = task_state(conn, task_id)[2]
    assert output["companies_checked"] == 2 and output["insights_created"] == 2
    rows = insights(conn)
    assert [(n, t) for n, t, *_ in rows] == [("02000002", "funding_round"),
                                             ("02000002", "job_posting")]
    assert {str(r[4]) for r in rows} == {stream_id}

    # The same signals for the whole organization are another audience's: written again,
    # once, without a stream.
    task_id = enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=online(ch)) is Outcome.COMPLETED
    assert task_state(conn, task_id)[2]["insights_created"] == 4
    assert len(insights(conn)) == 6


async def test_offline_the_register_dates_speak_where_no_filing_does(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    """No key: stored filings first; the register row's dates for the categories they do
    not cover (the made-up date is weaker evidence than a filing: at most 0.3)."""
    renamed = add_company(conn, "06000006", "NEW NAME LTD",
                          accounts_last_made_up=days_ago(40))
    conn.execute("UPDATE companies SET previous_names = %s WHERE id = %s",
                 (json.dumps([{"name": "OLD NAME LTD", "changed_on": days_ago(20)}]), renamed))
    filed = add_company(conn, "07000007", "FILED LTD", accounts_last_made_up=days_ago(40))
    conn.execute(
        "INSERT INTO company_filings (company_id, transaction_id, category, type, filed_on, "
        "description) VALUES (%s, 'FILED-AA', 'accounts', 'AA', %s, "
        "'accounts-with-accounts-type-small')", (filed, days_ago(5)))
    create_seed_scout(conn, {"signals": ["accounts_filed", "name_change"], "threshold": 0.3})
    task_id = enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=test_settings()) is Outcome.COMPLETED
    output = task_state(conn, task_id)[2]
    assert (output["mode"], output["companies_checked"]) == ("offline", 2)
    rows = conn.execute(
        "SELECT c.company_number, i.metadata #>> '{signal,type}', "
        "i.metadata #>> '{signal,source}', (i.metadata #>> '{signal,strength}')::numeric "
        "FROM stream_insights i JOIN companies c ON c.id = i.company_id ORDER BY 1, 2"
    ).fetchall()
    assert [(n, t, src, float(s)) for n, t, src, s in rows] == [
        ("06000006", "accounts_filed", "register", 0.3),
        ("06000006", "name_change", "register", 0.5),
        ("07000007", "accounts_filed", "companies_house", 0.4),
    ]


async def test_configuration_errors_fail_permanently_naming_the_field(
    conn: Conn, pool: AsyncConnectionPool, companies: dict[str, str],
) -> None:
    create_seed_scout(conn, {"signals": ["job_posting", "rumours"]})
    task_id = enqueue(conn)
    assert await run_task_inline(pool, task_id, registry=REGISTRY) is Outcome.FAILED
    status, retries, _, error = task_state(conn, task_id)
    assert status == "failed" and retries == 0
    assert "Daily Signal Scout" in error and "signals.1" in error
    assert conn.execute("SELECT count(*) FROM stream_insights").fetchone() == (0,)


async def test_a_refused_key_fails_permanently_and_writes_nothing(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
    companies: dict[str, str],
) -> None:
    create_seed_scout(conn)
    task_id = enqueue(conn)
    settings = test_settings(COMPANIES_HOUSE_API_KEY="wrong", COMPANIES_HOUSE_BASE_URL=ch.url)
    assert await run_task_inline(pool, task_id, registry=REGISTRY,
                                 settings=settings) is Outcome.FAILED
    assert "refused the API key" in task_state(conn, task_id)[3]
    assert conn.execute("SELECT count(*) FROM stream_insights").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM company_filings").fetchone() == (0,)


def _cli(db_url: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=REPO,
                            env=daemon_env(db_url), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


@pytest.mark.timeout(120)
def test_seed_example_2_created_with_the_cli_and_run_by_a_daemon(
    conn: Conn, db_url: str, tmp_path: Path, ch: CompaniesHouseStandIn,
    companies: dict[str, str],
) -> None:
    """The seed's createAgent call as the CLI spells it, then a manual run (`agent-runner
    enqueue`) worked by a real daemon against the stand-ins; a second run writes none."""
    configuration = {**SEED_CONFIGURATION, "companies_house": FAST_CH}
    agent_id = _cli(db_url, "agents", "create", "Daily Signal Scout", "--type", "scout_agent",
                    "--cron", "0 9 * * *", "--config", json.dumps(configuration)).strip()
    row = conn.execute("SELECT agent_type, schedule_cron, configuration FROM ai_agents "
                       "WHERE id = %s", (agent_id,)).fetchone()
    assert row == ("scout_agent", "0 9 * * *", configuration)

    def finished(task_id: str) -> bool:
        return task_state(conn, task_id)[0] in ("completed", "failed")

    env = {"COMPANIES_HOUSE_API_KEY": "k", "COMPANIES_HOUSE_BASE_URL": ch.url,
           "ANTHROPIC_API_KEY": ""}
    with daemons(db_url, tmp_path / "daemon", **env):
        first = _cli(db_url, "enqueue", "Daily Signal Scout").strip().split()[0]
        wait_until(lambda: finished(first), timeout=60, message="the first scout run")
        second = _cli(db_url, "enqueue", "Daily Signal Scout").strip().split()[0]
        wait_until(lambda: finished(second), timeout=60, message="the second scout run")
    status, _, output, error = task_state(conn, first)
    assert status == "completed", error
    assert (output["insights_created"], output["mode"]) == (4, "online")
    assert [(n, t, float(s)) for n, t, s, *_ in insights(conn)] == EXPECTED
    status, _, output, error = task_state(conn, second)
    assert status == "completed", error
    assert output["insights_created"] == 0
    assert len(insights(conn)) == 4
