"""The business agents' insights (issue 11, item 4): what each writes for a person to
read, once per run, never twice through a retry. Real Postgres, the real executor."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from agents.enrichment_agent import EnrichmentAgent
from agents.opportunity_bot import OpportunityBot
from agents.scoring_agent import ScoringAgent
from runner.outcomes import Outcome
from runner.plugins import Registry
from tests.harness import run_task_inline, task_state
from tests.integration.test_opportunity_and_scoring import GOAL, add_company

Conn = psycopg.Connection[tuple[Any, ...]]

REGISTRY = Registry([OpportunityBot(), EnrichmentAgent(), ScoringAgent()])
AGENTS = (("bot", "opportunity_bot"), ("enricher", "enrichment_agent"),
          ("scorer", "scoring_agent"))
ENRICHED = {
    "website": "https://example.invalid", "tech_stack": ["Stripe", "HubSpot"],
    "officers_count": 3, "social_score": 0.5, "enrichment_status": "enriched",
    "employee_estimate": 40,
}


@pytest.fixture
def stream(conn: Conn) -> uuid.UUID:
    """A stream with the pipeline assigned, and three matching companies: one already
    enriched with external signals (critical once scored), one with an outstanding
    charge (a buying signal the enrichment agent records), one plain."""
    add_company(conn, name="CRITICAL CO LTD", mortgages_outstanding=1, **ENRICHED,
                buying_signals=[
                    {"type": "hiring", "strength": 0.4, "source": "website",
                     "detail": "careers page linked: https://example.invalid/jobs"},
                    {"type": "tech_adoption", "strength": 0.2, "source": "website",
                     "detail": "uses Stripe, HubSpot"}])
    add_company(conn, name="CHARGED CO LTD", mortgages_outstanding=2)
    add_company(conn, name="PLAIN CO LTD")
    row = conn.execute(
        "INSERT INTO streams (name, goal_criteria, target_metrics) VALUES ('Leads', %s, %s) "
        "RETURNING id", (Jsonb(GOAL["goal_criteria"]), Jsonb(GOAL["target_metrics"]))
    ).fetchone()
    assert row
    ids = []
    for order, (name, agent_type) in enumerate(AGENTS, 1):
        agent = conn.execute(
            "INSERT INTO ai_agents (name, agent_type) VALUES (%s, %s) RETURNING id",
            (name, agent_type)).fetchone()
        assert agent
        conn.execute(
            "INSERT INTO stream_agent_assignments (stream_id, agent_id, execution_order, "
            "depends_on_agent_ids) VALUES (%s, %s, %s, %s::uuid[])",
            (row[0], agent[0], order, ids[-1:]))
        ids.append(agent[0])
    return uuid.UUID(str(row[0]))


def pending_task(conn: Conn, agent: str) -> str:
    row = conn.execute(
        "SELECT t.id::text FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
        "WHERE a.name = %s AND t.status = 'pending' ORDER BY t.created_at DESC LIMIT 1",
        (agent,)).fetchone()
    assert row, f"no pending task of {agent}"
    return str(row[0])


def insights(conn: Conn, stream_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT kind, title, body, metadata, dedupe_key, task_id::text FROM stream_insights "
        "WHERE stream_id = %s ORDER BY created_at, kind", (stream_id,)).fetchall()


async def run_pipeline(conn: Conn, pool: AsyncConnectionPool, stream_id: uuid.UUID) -> str:
    row = conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,)).fetchone()
    assert row
    for name, _ in AGENTS:
        assert await run_task_inline(pool, pending_task(conn, name),
                                     registry=REGISTRY) is Outcome.COMPLETED
    return str(row[0])


async def test_each_agent_writes_what_a_person_wants_to_read_once_per_run(
    conn: Conn, pool: AsyncConnectionPool, stream: uuid.UUID,
) -> None:
    run_id = await run_pipeline(conn, pool, stream)
    rows = insights(conn, stream)
    assert [r[0] for r in rows] == ["discovery", "buying_signals", "leads"]
    agent_ids = dict(conn.execute("SELECT name, id::text FROM ai_agents").fetchall())
    assert [r[4] for r in rows] == [
        f"discovery:run:{run_id}:{agent_ids['bot']}",
        f"buying_signals:run:{run_id}:{agent_ids['enricher']}",
        f"leads:run:{run_id}:{agent_ids['scorer']}",
    ]

    discovery, signals, leads = rows
    assert discovery[1] == "3 new companies found for Leads, 1 qualified"
    assert "industry SaaS, FinTech; in UK; 10-500 employees" in discovery[2]
    assert discovery[3]["companies_found"] == 3 and discovery[3]["items_created"] == 3
    assert discovery[3]["best"][0]["name"] == "CRITICAL CO LTD"

    assert signals[1] == "Buying signals at 2 of 3 companies enriched: outstanding charges 2"
    assert "CHARGED CO LTD" in signals[2] and "2 outstanding charge(s) registered" in signals[2]
    assert signals[3]["by_type"] == {"outstanding_charges": 2}

    scored = dict(conn.execute(
        "SELECT c.name, i.priority FROM stream_items i JOIN companies c ON c.id = i.company_id "
        "WHERE i.stream_id = %s", (stream,)).fetchall())
    assert scored["CRITICAL CO LTD"] == "critical"
    assert scored == {"CRITICAL CO LTD": "critical", "CHARGED CO LTD": "medium",
                      "PLAIN CO LTD": "medium"}
    assert leads[1] == "1 new critical lead in Leads"
    assert (leads[3]["newly_critical"], leads[3]["newly_high"]) == (1, 0)
    (critical,) = leads[3]["leads"]
    assert critical["name"] == "CRITICAL CO LTD" and critical["previous_priority"] is None
    assert critical["reasons"][0] == (
        "meets industry, location and employees (about 25 employees, from enrichment)")
    assert "hiring: careers page linked: https://example.invalid/jobs" in critical["reasons"]
    assert leads[2].startswith("CRITICAL 4.80 CRITICAL CO LTD (")

    # Scoring again finds nothing newly critical or high: no second leads insight.
    row = conn.execute("SELECT enqueue_agent_task('scorer', %s)",
                       (Jsonb({"stream_id": str(stream)}),)).fetchone()
    assert row
    assert await run_task_inline(pool, str(row[0]), registry=REGISTRY) is Outcome.COMPLETED
    assert [r[0] for r in insights(conn, stream)] == ["discovery", "buying_signals", "leads"]

    # A newly critical lead outside a run: an insight keyed by its task.
    conn.execute("UPDATE companies SET buying_signals = buying_signals || %s, "
                 "employee_estimate = 40 WHERE name = 'CHARGED CO LTD'",
                 (Jsonb([{"type": "hiring", "strength": 0.4, "detail": "jobs"},
                         {"type": "new_officers", "strength": 0.3, "detail": "2"},
                         {"type": "tech_adoption", "strength": 0.2, "detail": "x"}]),))
    conn.execute("UPDATE companies SET website = 'https://x.invalid', tech_stack = '{X}', "
                 "officers_count = 2, social_score = 0.3 WHERE name = 'CHARGED CO LTD'")
    # A scorer not assigned to the stream: its task is no workflow run's.
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('loose', 'scoring_agent')")
    row = conn.execute("SELECT enqueue_agent_task('loose', %s)",
                       (Jsonb({"stream_id": str(stream)}),)).fetchone()
    assert row
    assert await run_task_inline(pool, str(row[0]), registry=REGISTRY) is Outcome.COMPLETED
    last = insights(conn, stream)[-1]
    assert last[0] == "leads" and last[4] == f"leads:task:{row[0]}"
    assert [lead["name"] for lead in last[3]["leads"]] == ["CHARGED CO LTD"]


async def test_a_retried_finish_writes_the_insight_once(
    conn: Conn, pool: AsyncConnectionPool, stream: uuid.UUID,
) -> None:
    """The first attempt's finishing transaction fails after the insight was inserted
    (a trigger refuses the first stream_insights row once): it is rolled back with the
    rest, and the retry writes it exactly once."""
    conn.execute("CREATE TABLE refuse_once (done boolean)")
    conn.execute("""
        CREATE FUNCTION refuse_first_insight() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM refuse_once) THEN
                RAISE EXCEPTION 'refusing the first insight';
            END IF;
            RETURN NEW;
        END $$""")
    conn.execute("CREATE TRIGGER refuse_first BEFORE INSERT ON stream_insights "
                 "FOR EACH ROW EXECUTE FUNCTION refuse_first_insight()")
    row = conn.execute("SELECT trigger_stream_workflow(%s)", (stream,)).fetchone()
    assert row
    bot = pending_task(conn, "bot")
    assert await run_task_inline(pool, bot, registry=REGISTRY) is Outcome.RETRY
    status, retries, _, error = task_state(conn, bot)
    assert (status, retries) == ("pending", 1) and "refusing the first insight" in error
    assert conn.execute("SELECT count(*) FROM stream_items").fetchone() == (0,)
    assert insights(conn, stream) == []

    conn.execute("INSERT INTO refuse_once VALUES (true)")
    assert await run_task_inline(pool, bot, registry=REGISTRY) is Outcome.COMPLETED
    rows = insights(conn, stream)
    assert [(r[0], r[5]) for r in rows] == [("discovery", bot)]
    assert conn.execute("SELECT count(*) FROM stream_items").fetchone() == (3,)


def test_a_second_insight_with_the_same_key_is_not_written(conn: Conn) -> None:
    for _ in range(2):
        conn.execute(
            "INSERT INTO stream_insights (kind, title, dedupe_key) VALUES ('x', 't', 'k') "
            "ON CONFLICT (org_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING")
    assert conn.execute("SELECT count(*) FROM stream_insights").fetchone() == (1,)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO stream_insights (kind, title, dedupe_key) "
                     "VALUES ('x', 't', 'k')")
    # Rows without a key (the llm_agent's save_insight) are not constrained.
    for _ in range(2):
        conn.execute("INSERT INTO stream_insights (kind, title) VALUES ('x', 't')")
    assert conn.execute("SELECT count(*) FROM stream_insights").fetchone() == (3,)
