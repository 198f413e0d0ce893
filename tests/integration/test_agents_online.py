"""The business agents with their keys set: opportunity_bot's live Companies House
discovery and LLM qualification, the enrichment agent's LLM website summary. Real
Postgres, the real executor, the stand-ins on 127.0.0.1."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agents.enrichment_agent import EnrichmentAgent
from agents.opportunity_bot import OpportunityBot
from runner.outcomes import Outcome
from runner.plugins import Registry
from runner.settings import Settings
from tests.harness import FAST_LLM_POLICY as FAST
from tests.harness import run_task_inline, test_settings
from tests.standins.anthropic_api import AnthropicStandIn, Reply, error, text
from tests.standins.companies_house import CompaniesHouseStandIn, running_companies_house
from tests.standins.websites import running_websites

Conn = psycopg.Connection[tuple[Any, ...]]

MODEL = "claude-sonnet-4-6"
LEDGER_KEYS = {"input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "llm_calls", "cost_usd"}
CH_FAST = {"max_attempts": 2, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02,
           "max_rate_limit_wait_seconds": 2}
BOT = Registry([OpportunityBot(llm_policy=FAST)])
ENRICHER = Registry([EnrichmentAgent(llm_policy=FAST)])
GOAL = {"goal_criteria": {"industry": ["SaaS"], "location": ["London"]},
        "target_metrics": {"companies_to_find": 10, "min_quality_score": 3.0}}
LIVE_NUMBER = "09000001"


@pytest.fixture
def ch() -> Iterator[CompaniesHouseStandIn]:
    with running_companies_house(api_key="k") as standin:
        yield standin


@pytest.fixture
def api() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(default=_qualify_answer) as standin:
        yield standin


def _qualify_answer(body: dict[str, Any]) -> Reply:
    """Qualifies the company only the stand-in knows, with a hiring signal; not the
    local one."""
    prompt = body["messages"][0]["content"]
    live = "LIVE ONLY SOFTWARE LTD" in prompt
    return text(json.dumps({
        "qualified": live, "fit_score": 0.9 if live else 0.2, "reasons": ["test"],
        "buying_signals": [{"type": "hiring", "detail": f"hiring ({'live' if live else 'local'})",
                            "strength": "high"}],
    }))


def settings(ch: CompaniesHouseStandIn | None = None, api: AnthropicStandIn | None = None,
             ch_key: str = "k") -> Settings:
    values: dict[str, Any] = {}
    if ch is not None:
        values.update(COMPANIES_HOUSE_API_KEY=ch_key, COMPANIES_HOUSE_BASE_URL=ch.url)
    if api is not None:
        values.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=api.url)
    return test_settings(**values)


def add_local_company(conn: Conn, number: str = "08000001",
                      name: str = "LOCAL SAAS LTD") -> None:
    conn.execute(
        "INSERT INTO companies (company_number, name, status, address_line1, post_town, "
        "country, postcode, sic_codes, accounts_category) VALUES (%s, %s, 'Active', "
        "'1 CITY ROAD', 'LONDON', 'ENGLAND', 'EC1V 2NX', '{62012}', 'SMALL')",
        (number, name),
    )


def add_stream(conn: Conn) -> uuid.UUID:
    row = conn.execute("INSERT INTO streams (name) VALUES ('london saas') RETURNING id"
                       ).fetchone()
    assert row
    return uuid.UUID(str(row[0]))


def enqueue(conn: Conn, name: str, agent_type: str, payload: dict[str, Any],
            configuration: dict[str, Any]) -> str:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, model, configuration) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (org_id, name) "
        "DO UPDATE SET configuration = EXCLUDED.configuration",
        (name, agent_type, MODEL, json.dumps(configuration)),
    )
    row = conn.execute("SELECT enqueue_agent_task(%s, %s::jsonb)",
                       (name, json.dumps(payload))).fetchone()
    assert row
    return str(row[0])


def enqueue_bot(conn: Conn, stream: uuid.UUID, **configuration: Any) -> str:
    return enqueue(conn, "bot", "opportunity_bot",
                   {"stream_id": str(stream), "goal_context": GOAL},
                   {"companies_house": CH_FAST, "llm_concurrency": 1, **configuration})


def task(conn: Conn, task_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT status, retry_count, output, error_message "
                          "FROM agent_tasks WHERE id = %s", (task_id,)).fetchone()
    assert row
    return row


def executions(conn: Conn, task_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT attempt, metrics, results_summary FROM agent_executions "
                           "WHERE task_id = %s ORDER BY attempt", (task_id,)).fetchall()


def stream_items(conn: Conn, stream: uuid.UUID) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT c.company_number, si.qualified, si.buying_signals FROM stream_items si "
            "JOIN companies c ON c.id = si.company_id WHERE si.stream_id = %s", (stream,),
        ).fetchall()
    numbers = [row["company_number"] for row in rows]
    assert len(numbers) == len(set(numbers)), "an item was duplicated"
    return {row["company_number"]: row for row in rows}


def companies_with(conn: Conn, number: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM companies WHERE company_number = %s",
                           (number,)).fetchall()


def ledger(conn: Conn, task_id: str) -> list[tuple[int, int]]:
    return [(int(a), int(i)) for a, i in conn.execute(
        "SELECT e.attempt, c.call_index FROM llm_calls c JOIN agent_executions e "
        "ON e.id = c.execution_id WHERE c.task_id = %s ORDER BY e.attempt, c.call_index",
        (task_id,)).fetchall()]


def add_live_companies(ch: CompaniesHouseStandIn) -> None:
    ch.add_company(LIVE_NUMBER, name="LIVE ONLY SOFTWARE LTD", sic_codes=["62012"],
                   locality="London", postal_code="EC2A 4NE", date_of_creation="2019-06-01")
    # Found by no search of this goal: another industry.
    ch.add_company("09000002", name="BAKERY LTD", sic_codes=["10710"])


# opportunity_bot: live discovery -------------------------------------------------------


async def test_live_discovery_adds_a_company_only_companies_house_knows_exactly_once(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
) -> None:
    add_local_company(conn)
    add_live_companies(ch)
    stream = add_stream(conn)
    task_id = enqueue_bot(conn, stream)

    assert await run_task_inline(pool, task_id, registry=BOT,
                                 settings=settings(ch)) is Outcome.COMPLETED

    output = task(conn, task_id)["output"]
    assert output["companies_found"] == 2 and output["items_created"] == 2
    assert set(output) == {"companies_found", "items_created", "qualified_count",
                           "avg_quality_score", "high_quality_count"}
    [search] = [r for r in ch.requests if r.path == "/advanced-search/companies"]
    assert search.query["company_status"] == ["active"]
    assert "62012" in search.query["sic_codes"][0].split(",")
    assert search.query["size"] == ["100"]
    assert "location" not in search.query  # London is a region: the local filter decides
    [row] = companies_with(conn, LIVE_NUMBER)
    assert (row["name"], row["status"], row["category"], row["post_town"], row["postcode"],
            row["sic_codes"], str(row["incorporation_date"])) == (
        "LIVE ONLY SOFTWARE LTD", "Active", "Private Limited Company", "London",
        "EC2A 4NE", ["62012"], "2019-06-01")
    assert row["enrichment_status"] == "not_enriched"
    assert companies_with(conn, "09000002") == []
    assert set(stream_items(conn, stream)) == {"08000001", LIVE_NUMBER}
    [execution] = executions(conn, task_id)
    assert execution["results_summary"]["mode"] == "live"
    assert execution["results_summary"]["new_companies"] == 1

    # The same goal again: the company is known now, nothing is added twice.
    again = enqueue_bot(conn, stream)
    assert await run_task_inline(pool, again, registry=BOT,
                                 settings=settings(ch)) is Outcome.COMPLETED
    assert task(conn, again)["output"]["items_created"] == 0
    assert len(companies_with(conn, LIVE_NUMBER)) == 1
    assert len(stream_items(conn, stream)) == 2
    assert executions(conn, again)[0]["results_summary"]["new_companies"] == 0


async def test_live_search_outage_falls_back_to_the_local_table(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
) -> None:
    add_local_company(conn)
    add_live_companies(ch)
    ch.fail("/advanced-search", status=500, times=None)
    stream = add_stream(conn)
    task_id = enqueue_bot(conn, stream)

    assert await run_task_inline(pool, task_id, registry=BOT,
                                 settings=settings(ch)) is Outcome.COMPLETED
    assert task(conn, task_id)["output"]["items_created"] == 1
    assert ch.count(500) == 2  # the client's own bounded retries
    assert set(stream_items(conn, stream)) == {"08000001"}
    assert companies_with(conn, LIVE_NUMBER) == []
    assert executions(conn, task_id)[0]["results_summary"]["mode"] == "offline_fallback"
    warnings = [m for (m,) in conn.execute(
        "SELECT message FROM agent_task_logs WHERE task_id = %s AND log_type = 'warning'",
        (task_id,))]
    assert any("live Companies House discovery failed" in m for m in warnings)


async def test_refused_companies_house_key_fails_permanently(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn,
) -> None:
    add_local_company(conn)
    stream = add_stream(conn)
    task_id = enqueue_bot(conn, stream)
    assert await run_task_inline(pool, task_id, registry=BOT,
                                 settings=settings(ch, ch_key="wrong")) is Outcome.FAILED
    state = task(conn, task_id)
    assert (state["status"], state["retry_count"]) == ("failed", 0)
    assert "HTTP 401" in state["error_message"]
    assert stream_items(conn, stream) == {}


# opportunity_bot: LLM qualification ----------------------------------------------------


async def test_llm_qualifies_candidates_and_a_retried_attempt_duplicates_nothing(
    conn: Conn, pool: AsyncConnectionPool, ch: CompaniesHouseStandIn, api: AnthropicStandIn,
) -> None:
    add_local_company(conn)
    add_live_companies(ch)
    stream = add_stream(conn)
    task_id = enqueue_bot(conn, stream)
    # Attempt 1: the first company's call answers, then a 500 storm on the second.
    first = _qualify_answer({"messages": [{"content": "LIVE ONLY SOFTWARE LTD"}]})
    api.enqueue(first, *[error(500, "api_error", "Internal server error")] * 3)
    both = settings(ch, api)

    assert await run_task_inline(pool, task_id, registry=BOT, settings=both) is Outcome.RETRY
    assert task(conn, task_id)["status"] == "pending"
    assert ledger(conn, task_id) == [(1, 1)]  # its cost is real
    # Nothing of attempt 1 was committed: no item, no company from the search.
    assert stream_items(conn, stream) == {}
    assert companies_with(conn, LIVE_NUMBER) == []

    assert await run_task_inline(pool, task_id, registry=BOT,
                                 settings=both) is Outcome.COMPLETED
    state = task(conn, task_id)
    assert (state["status"], state["retry_count"]) == ("completed", 1)
    assert state["output"]["items_created"] == 2
    assert state["output"]["qualified_count"] == 1
    # The first company's answer is replayed from the journal, not paid again.
    assert ledger(conn, task_id) == [(1, 1), (2, 1)]
    attempt1, attempt2 = executions(conn, task_id)
    assert LEDGER_KEYS <= set(attempt2["metrics"]) and attempt2["metrics"]["llm_calls"] == 1
    assert attempt2["metrics"]["llm_replayed_calls"] == 1
    assert attempt1["metrics"]["llm_calls"] == 1
    assert attempt2["results_summary"]["llm_qualified"] == 2

    found = stream_items(conn, stream)
    assert set(found) == {"08000001", LIVE_NUMBER}
    assert found[LIVE_NUMBER]["qualified"] is True
    assert found["08000001"]["qualified"] is False
    for number, detail in ((LIVE_NUMBER, "hiring (live)"), ("08000001", "hiring (local)")):
        llm = [s for s in found[number]["buying_signals"] if s.get("source") == "llm"]
        assert llm == [{"type": "hiring", "strength": 0.3, "source": "llm", "detail": detail,
                        "level": "high", "agent": "opportunity_bot"}]
    assert len(companies_with(conn, LIVE_NUMBER)) == 1
    prompts = [r.body["messages"][0]["content"] for r in api.message_requests()]
    assert any('"name": "LIVE ONLY SOFTWARE LTD"' in p for p in prompts)


async def test_one_company_with_an_invalid_answer_keeps_the_rule_based_verdict(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn,
) -> None:
    add_local_company(conn)
    stream = add_stream(conn)
    task_id = enqueue_bot(conn, stream)
    api.enqueue(text("It fits, I think."), text("Really, it fits."))
    assert await run_task_inline(pool, task_id, registry=BOT,
                                 settings=settings(api=api)) is Outcome.COMPLETED
    [item] = stream_items(conn, stream).values()
    assert not [s for s in item["buying_signals"] if s.get("source") == "llm"]
    assert executions(conn, task_id)[0]["results_summary"]["llm_qualified"] == 0
    assert executions(conn, task_id)[0]["metrics"]["llm_calls"] == 2
    warnings = [m for (m,) in conn.execute(
        "SELECT message FROM agent_task_logs WHERE task_id = %s AND log_type = 'warning'",
        (task_id,))]
    assert any("keeping the rule-based verdict" in m for m in warnings)


# enrichment_agent: LLM website summary ----------------------------------------------


async def test_enrichment_summarises_the_website_with_the_model(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    answer = {"industry": "Manufacturing", "description": "Makes things for callers.",
              "signals": [{"type": "expansion", "detail": "New site", "strength": "low"}]}
    with running_websites() as sites, AnthropicStandIn() as api:
        row = conn.execute(
            "INSERT INTO companies (company_number, name, website, sic_codes, sic_texts) "
            "VALUES ('07000001', 'PLAIN LTD', %s, '{62012}', "
            "'{\"62012 - Business and domestic software development\"}') RETURNING id",
            (sites.site_url("plain"),)).fetchone()
        assert row
        stream = add_stream(conn)
        conn.execute("INSERT INTO stream_items (stream_id, company_id) VALUES (%s, %s)",
                     (stream, row[0]))
        api.enqueue(text(json.dumps(answer)))
        task_id = enqueue(conn, "enricher", "enrichment_agent", {"stream_id": str(stream)}, {
            "fetch_websites": True,
            "website": {"deadline_seconds": 2.0, "allow_private_addresses": True},
        })
        assert await run_task_inline(pool, task_id, registry=ENRICHER,
                                     settings=settings(api=api)) is Outcome.COMPLETED
        [request] = api.message_requests()

    assert task(conn, task_id)["output"]["enriched_count"] == 1
    assert "We make things. Call us." in request.body["messages"][0]["content"]
    [company] = companies_with(conn, "07000001")
    assert company["industry_description"] == "Manufacturing: Makes things for callers."
    llm = [s for s in company["buying_signals"] if s.get("source") == "llm"]
    assert llm == [{"type": "expansion", "strength": 0.1, "source": "llm",
                    "detail": "New site", "level": "low", "agent": "enrichment_agent"}]
    [item] = stream_items(conn, stream).values()
    assert [s for s in item["buying_signals"] if s.get("source") == "llm"] == llm
    [execution] = executions(conn, task_id)
    assert execution["metrics"]["llm_calls"] == 1
    assert execution["results_summary"]["llm_summaries"] == 1


async def test_enrichment_without_a_key_uses_the_sic_texts(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    with running_websites() as sites:
        row = conn.execute(
            "INSERT INTO companies (company_number, name, website, sic_codes, sic_texts) "
            "VALUES ('07000002', 'PLAIN TWO LTD', %s, '{62012}', "
            "'{\"62012 - Business and domestic software development\"}') RETURNING id",
            (sites.site_url("plain"),)).fetchone()
        assert row
        stream = add_stream(conn)
        conn.execute("INSERT INTO stream_items (stream_id, company_id) VALUES (%s, %s)",
                     (stream, row[0]))
        task_id = enqueue(conn, "enricher", "enrichment_agent", {"stream_id": str(stream)}, {
            "fetch_websites": True,
            "website": {"deadline_seconds": 2.0, "allow_private_addresses": True},
        })
        assert await run_task_inline(pool, task_id, registry=ENRICHER,
                                     settings=settings()) is Outcome.COMPLETED
    [company] = companies_with(conn, "07000002")
    assert company["industry_description"] == "Business and domestic software development"
