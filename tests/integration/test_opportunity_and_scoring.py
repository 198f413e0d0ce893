"""opportunity_bot and scoring_agent end to end: enqueued through SQL, run through the
real executor (``run_task_inline``), against real Postgres."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from agents import lead_scoring
from agents.lead_scoring import CompanyFacts
from agents.opportunity_bot import OpportunityBot
from agents.scoring_agent import ScoringAgent
from agents.stream_goal import StreamGoal, StreamTaskInput, load_stream_goal
from runner.api import AgentContext, AgentResult
from runner.outcomes import Outcome
from runner.plugins import Registry
from tests.harness import run_task_inline

Conn = psycopg.Connection[tuple[Any, ...]]

DEFAULT_ORG = uuid.UUID("00000000-0000-0000-0000-000000000001")
BOT_OUTPUT = {"companies_found", "items_created", "qualified_count", "avg_quality_score",
              "high_quality_count"}
SCORER_OUTPUT = {"items_updated", "avg_quality_score", "high_quality_count"}
GOAL: dict[str, Any] = {
    "goal_criteria": {
        "industry": ["SaaS", "FinTech"],
        "location": ["UK"],
        "employee_count": {"min": 10, "max": 500},
    },
    "target_metrics": {"companies_to_find": 50, "min_quality_score": 3.5},
}
_numbers = itertools.count(1)


def add_company(conn: Conn, **fields: Any) -> uuid.UUID:
    """A London SaaS company, complete register record, SMALL (about 25 staff)."""
    values: dict[str, Any] = {
        "company_number": f"{next(_numbers):08d}",
        "name": f"COMPANY {uuid.uuid4().hex[:8].upper()} LTD",
        "status": "Active", "address_line1": "1 CITY ROAD", "post_town": "LONDON",
        "country": "ENGLAND", "postcode": "EC1V 2NX", "sic_codes": ["62012"],
        "accounts_category": "SMALL", "incorporation_date": dt.date(2012, 5, 1),
        "accounts_last_made_up": dt.date.today() - dt.timedelta(days=200),
        "accounts_next_due": dt.date.today() + dt.timedelta(days=100),
        "conf_stmt_last_made_up": dt.date.today() - dt.timedelta(days=30),
    }
    values.update(fields)
    params = [Jsonb(v) if k in ("previous_names", "buying_signals") else v
              for k, v in values.items()]
    row = conn.execute(
        f"INSERT INTO companies ({', '.join(values)}) "  # column names from this file only
        f"VALUES ({', '.join(['%s'] * len(values))}) RETURNING id",
        params,
    ).fetchone()
    assert row is not None
    return cast(uuid.UUID, row[0])


def add_stream(conn: Conn, goal: Mapping[str, Any] | None = None,
               org_id: uuid.UUID = DEFAULT_ORG) -> uuid.UUID:
    goal = goal or {}
    row = conn.execute(
        "INSERT INTO streams (org_id, name, goal_criteria, target_metrics) "
        "VALUES (%s, 'test stream', %s, %s) RETURNING id",
        (org_id, Jsonb(goal.get("goal_criteria", {})), Jsonb(goal.get("target_metrics", {}))),
    ).fetchone()
    assert row is not None
    return cast(uuid.UUID, row[0])


def enqueue(conn: Conn, agent: str, payload: Mapping[str, Any]) -> str:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type) VALUES ('bot', 'opportunity_bot'), "
        "('scorer', 'scoring_agent') ON CONFLICT DO NOTHING")
    row = conn.execute("SELECT enqueue_agent_task(%s, %s)", (agent, Jsonb(payload))).fetchone()
    assert row is not None
    return str(row[0])


def task(conn: Conn, task_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT status, retry_count, output, error_message FROM agent_tasks WHERE id = %s",
            (task_id,),
        ).fetchone()
    assert row is not None
    return row


def items(conn: Conn, stream_id: uuid.UUID) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT si.*, c.name FROM stream_items si JOIN companies c ON c.id = si.company_id "
            "WHERE stream_id = %s ORDER BY position NULLS LAST, company_id",
            (stream_id,),
        ).fetchall()


async def run(pool: AsyncConnectionPool, task_id: str, **kwargs: Any) -> Outcome:
    return await run_task_inline(pool, task_id, **kwargs)


def payload(stream_id: uuid.UUID, **goal_changes: Any) -> dict[str, Any]:
    goal = json.loads(json.dumps(GOAL))
    for key, value in goal_changes.items():
        section = "target_metrics" if key in ("companies_to_find", "min_quality_score") \
            else "goal_criteria"
        goal[section][key] = value
    return {"stream_id": str(stream_id), "goal_context": goal}


@pytest.fixture
def world(conn: Conn) -> dict[str, Any]:
    """Six companies that meet GOAL and seven that must not."""
    other_org = conn.execute(
        "INSERT INTO organizations (name) VALUES ('other') RETURNING id").fetchone()
    assert other_org is not None
    matching = {
        "small_london": add_company(conn),
        "medium_manchester": add_company(
            conn, post_town="MANCHESTER", county="GREATER MANCHESTER", postcode="M1 1AE",
            accounts_category="MEDIUM", sic_codes=["63110"]),
        "young_leeds": add_company(
            conn, post_town="LEEDS", postcode="LS1 4AP", accounts_category="FULL",
            sic_codes=["62020", "66190"],
            incorporation_date=dt.date.today() - dt.timedelta(days=300),
            mortgages_charges=2, mortgages_outstanding=1),
        "edinburgh_fintech": add_company(
            conn, post_town="EDINBURGH", postcode="EH1 1YZ", country="SCOTLAND",
            accounts_category="TOTAL EXEMPTION FULL", sic_codes=["64999"]),
        # no accounts yet: the size is unknown, which does not exclude it
        "new_cardiff": add_company(
            conn, post_town="CARDIFF", postcode="CF10 1AA", country=None,
            accounts_category="NO ACCOUNTS FILED", accounts_last_made_up=None,
            sic_codes=["58290"]),
        # MICRO by its accounts, 60 staff by enrichment: the observation wins
        "enriched_micro": add_company(
            conn, accounts_category="MICRO ENTITY", employee_estimate=60,
            enrichment_status="enriched", website="https://example.com",
            tech_stack=["React"], officers_count=4),
    }
    excluded = {
        "bakery": add_company(conn, sic_codes=["10710"]),
        "dublin": add_company(conn, post_town="DUBLIN 2", postcode="D02 X285",
                              country="IRELAND"),
        "dissolved": add_company(conn, status="Dissolved"),
        "striking_off": add_company(conn, status="Active - Proposal to Strike off"),
        "micro": add_company(conn, accounts_category="MICRO ENTITY"),
        "dormant": add_company(conn, accounts_category="DORMANT"),
        "other_org": add_company(conn, org_id=other_org[0]),
    }
    return {"matching": matching, "excluded": excluded, "stream": add_stream(conn)}


# opportunity_bot --------------------------------------------------------------------


async def test_bot_adds_the_matching_companies(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    stream = world["stream"]
    task_id = enqueue(conn, "bot", payload(stream))
    assert await run(pool, task_id) is Outcome.COMPLETED
    output = task(conn, task_id)["output"]
    assert set(output) == BOT_OUTPUT
    rows = items(conn, stream)
    assert {r["company_id"] for r in rows} == set(world["matching"].values())
    assert output["companies_found"] == 6 and output["items_created"] == 6
    scores = [r["quality_score"] for r in rows]
    assert output["qualified_count"] == sum(r["qualified"] for r in rows) \
        == sum(s >= Decimal("3.5") for s in scores)
    assert output["qualified_count"] <= output["items_created"]
    assert output["avg_quality_score"] == float(
        (sum(scores) / len(scores)).quantize(Decimal("0.01")))
    assert output["high_quality_count"] == sum(s >= 4 for s in scores)
    execution = conn.execute(
        "SELECT id FROM agent_executions WHERE task_id = %s", (task_id,)).fetchone()
    assert execution is not None
    for row in rows:
        assert row["added_by_task_id"] == uuid.UUID(task_id)
        assert row["added_by_execution_id"] == execution[0]
        assert row["discovery_score"] == row["quality_score"]
        assert 0 <= row["quality_score"] <= 4  # not enriched yet: 4.0 at most
        assert row["priority"] == lead_scoring.priority_for(row["quality_score"])
        assert row["enrichment_status"] == "pending"
        assert row["position"] is None and row["scored_at"] is None
        assert row["score_details"]["scored_by"] == "opportunity_bot"
    by_id = {r["company_id"]: r for r in rows}
    young = by_id[world["matching"]["young_leeds"]]
    assert [s["type"] for s in young["buying_signals"]] == [
        "recent_incorporation", "outstanding_charges", "accounts_filed_on_time"]
    unknown_size = by_id[world["matching"]["new_cardiff"]]
    assert unknown_size["criteria_match"] == Decimal("0.8333")
    assert unknown_size["score_details"]["criteria"]["employees"] == 0.5
    assert by_id[world["matching"]["enriched_micro"]]["enrichment_quality"] == Decimal("0.8")


async def test_rerunning_the_bot_adds_no_duplicates(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    stream = world["stream"]
    first = enqueue(conn, "bot", payload(stream))
    assert await run(pool, first) is Outcome.COMPLETED
    again = enqueue(conn, "bot", payload(stream))
    assert await run(pool, again) is Outcome.COMPLETED
    assert task(conn, again)["output"] == {
        "companies_found": 0, "items_created": 0, "qualified_count": 0,
        "avg_quality_score": 0.0, "high_quality_count": 0}
    assert len(items(conn, stream)) == 6


async def test_companies_to_find_caps_each_run_best_first(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    stream = world["stream"]
    created = []
    task_ids = []
    for found in (6, 4, 2, 0):
        task_id = enqueue(conn, "bot", payload(stream, companies_to_find=2))
        assert await run(pool, task_id) is Outcome.COMPLETED
        output = task(conn, task_id)["output"]
        assert output["companies_found"] == found
        assert output["items_created"] == min(2, found)
        created.append(output["items_created"])
        task_ids.append(uuid.UUID(task_id))
    rows = items(conn, stream)
    assert len(rows) == sum(created) == 6
    first_run = [r for r in rows if r["added_by_task_id"] == task_ids[0]]
    assert len(first_run) == 2
    assert min(r["quality_score"] for r in first_run) >= max(
        r["quality_score"] for r in rows if r not in first_run)


@pytest.mark.parametrize(("location", "expected"), [
    ("Leeds", {"young_leeds"}),
    ("greater manchester", {"medium_manchester"}),
    ("Scotland", {"edinburgh_fintech"}),
    ("Wales", {"new_cardiff"}),
    ("London", {"small_london", "enriched_micro"}),
])
async def test_locations(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any], location: str,
    expected: set[str],
) -> None:
    task_id = enqueue(conn, "bot", payload(world["stream"], location=location))
    assert await run(pool, task_id) is Outcome.COMPLETED
    assert {r["company_id"] for r in items(conn, world["stream"])} == {
        world["matching"][name] for name in expected}


async def test_goal_defaults_to_the_streams_own(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    stream = add_stream(conn, GOAL)
    task_id = enqueue(conn, "bot", {"stream_id": str(stream)})
    assert await run(pool, task_id) is Outcome.COMPLETED
    assert task(conn, task_id)["output"]["items_created"] == 6
    # a goal_context section given in the payload wins over the stream's
    task_id = enqueue(conn, "bot", {"stream_id": str(add_stream(conn, GOAL)), "goal_context": {
        "goal_criteria": {"industry": "FinTech"}}})
    assert await run(pool, task_id) is Outcome.COMPLETED
    assert task(conn, task_id)["output"]["items_created"] == 2  # 66190 and 64999


_INVALID = [
    (lambda s: payload(s, companies_to_find=-1),
     "goal_context.target_metrics.companies_to_find"),
    (lambda s: {"goal_context": GOAL}, "stream_id: Field required"),
    (lambda s: {"stream_id": "not-a-uuid"}, "stream_id: Input should be a valid UUID"),
    (lambda s: {"stream_id": 42}, "stream_id"),
    (lambda s: payload(s, industry=["Alchemy"]),
     "goal_context.goal_criteria.industry: Value error, unknown industry 'Alchemy'"),
    (lambda s: payload(s, location=["<>"]), "goal_context.goal_criteria.location"),
    (lambda s: payload(s, min_quality_score=7), "goal_context.target_metrics.min_quality_score"),
    (lambda s: payload(s, employee_count={"min": 50, "max": 10}),
     "goal_context.goal_criteria.employee_count"),
    (lambda s: {"stream_id": str(s), "goal_contxt": GOAL}, "goal_contxt"),
]


@pytest.mark.parametrize("agent", ["bot", "scorer"])
@pytest.mark.parametrize(("make", "field"), _INVALID)
async def test_invalid_payload_fails_permanently_naming_the_field(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any], agent: str, make: Any,
    field: str,
) -> None:
    task_id = enqueue(conn, agent, make(world["stream"]))
    assert await run(pool, task_id) is Outcome.FAILED
    result = task(conn, task_id)
    assert (result["status"], result["retry_count"]) == ("failed", 0)
    assert result["error_message"].startswith("invalid payload: ")
    assert field in result["error_message"]
    assert items(conn, world["stream"]) == []


@pytest.mark.parametrize("agent", ["bot", "scorer"])
async def test_run_time_goal_errors_fail_permanently(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any], agent: str
) -> None:
    other_org = conn.execute("SELECT id FROM organizations WHERE name = 'other'").fetchone()
    assert other_org is not None
    cases = [
        ({"stream_id": str(uuid.uuid4())}, "stream_id: no stream with id"),
        ({"stream_id": str(add_stream(conn, GOAL, org_id=other_org[0]))},
         "stream_id: stream", ),
        (payload(world["stream"], location=["UK", "Narnia"]),
         "goal_context.goal_criteria.location: unknown location 'Narnia'"),
        ({"stream_id": str(add_stream(conn, {"goal_criteria": {"industry": "Alchemy"}}))},
         "streams.goal_criteria.industry"),
    ]
    for body, message in cases:
        task_id = enqueue(conn, agent, body)
        assert await run(pool, task_id) is Outcome.FAILED
        result = task(conn, task_id)
        assert (result["status"], result["retry_count"]) == ("failed", 0)
        assert message in result["error_message"], result["error_message"]


class _InterferingBot(OpportunityBot):
    """Another run adds one of this run's companies before this one commits."""

    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
        result = await super().run(ctx, payload)
        async with ctx.connection() as conn:
            await conn.execute(
                "INSERT INTO stream_items (stream_id, company_id) "
                "SELECT %s, id FROM companies WHERE name LIKE 'COMPANY%%' AND status = 'Active' "
                "AND post_town = 'LEEDS' LIMIT 1 ON CONFLICT DO NOTHING",
                (payload.stream_id,),
            )
        return result


async def test_a_concurrent_addition_makes_the_attempt_retry(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    stream = world["stream"]
    task_id = enqueue(conn, "bot", payload(stream))
    interfering = Registry([_InterferingBot(), ScoringAgent()])
    assert await run(pool, task_id, registry=interfering) is Outcome.RETRY
    assert "added to the stream by another run" in task(conn, task_id)["error_message"]
    assert len(items(conn, stream)) == 1  # only the other run's item
    assert await run(pool, task_id) is Outcome.COMPLETED
    assert task(conn, task_id)["output"]["items_created"] == 5
    assert len(items(conn, stream)) == 6


# scoring_agent ----------------------------------------------------------------------


async def test_scoring_orders_the_stream(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    stream = world["stream"]
    assert await run(pool, enqueue(conn, "bot", payload(stream))) is Outcome.COMPLETED
    # the enrichment agent has been through one item meanwhile
    conn.execute(
        "UPDATE stream_items SET enrichment_status = 'enriched', buying_signals = %s "
        "WHERE company_id = %s",
        (Jsonb([{"type": "hiring", "source": "website", "detail": "careers page"}]),
         world["matching"]["young_leeds"]))
    task_id = enqueue(conn, "scorer", payload(stream))
    assert await run(pool, task_id) is Outcome.COMPLETED
    output = task(conn, task_id)["output"]
    assert set(output) == SCORER_OUTPUT
    rows = items(conn, stream)
    assert output["items_updated"] == len(rows) == 6
    scores = [r["quality_score"] for r in rows]
    assert output["avg_quality_score"] == float(
        (sum(scores) / len(scores)).quantize(Decimal("0.01")))
    assert output["high_quality_count"] == sum(s >= 4 for s in scores)
    assert [r["position"] for r in rows] == [1, 2, 3, 4, 5, 6]
    ranks = {"critical": 1, "high": 2, "medium": 3, "low": 4}
    keys = [(ranks[r["priority"]], -r["quality_score"]) for r in rows]
    assert keys == sorted(keys)
    for row in rows:
        assert 0 <= row["quality_score"] <= 5
        assert row["priority"] == lead_scoring.priority_for(row["quality_score"])
        assert row["qualified"] == (row["quality_score"] >= Decimal("3.5"))
        assert row["scored_at"] is not None
        assert row["score_details"]["scored_by"] == "scoring_agent"
        assert row["quality_score"] == min(5, max(0, (
            2 * row["criteria_match"] + row["data_completeness"] + row["enrichment_quality"]
            + row["buying_signal_score"]))).quantize(Decimal("0.01"))
    young = next(r for r in rows if r["company_id"] == world["matching"]["young_leeds"])
    # the enrichment agent's signal survives rescoring next to the derived ones
    assert [s["type"] for s in young["buying_signals"]] == [
        "recent_incorporation", "outstanding_charges", "accounts_filed_on_time", "hiring"]
    assert young["enrichment_quality"] == Decimal("0.2")
    # scoring again changes nothing
    again = enqueue(conn, "scorer", payload(stream))
    assert await run(pool, again) is Outcome.COMPLETED
    assert task(conn, again)["output"] == output
    assert [(r["company_id"], r["quality_score"], r["position"]) for r in items(conn, stream)] \
        == [(r["company_id"], r["quality_score"], r["position"]) for r in rows]


async def test_scoring_an_empty_stream(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = enqueue(conn, "scorer", {"stream_id": str(add_stream(conn))})
    assert await run(pool, task_id) is Outcome.COMPLETED
    assert task(conn, task_id)["output"] == {
        "items_updated": 0, "avg_quality_score": 0.0, "high_quality_count": 0}


async def test_rescoring_sees_growth_since_the_last_scoring(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    stream = world["stream"]
    assert await run(pool, enqueue(conn, "bot", payload(stream))) is Outcome.COMPLETED
    company = world["matching"]["small_london"]
    conn.execute("UPDATE companies SET accounts_category = 'MEDIUM', mortgages_charges = 1 "
                 "WHERE id = %s", (company,))
    assert await run(pool, enqueue(conn, "scorer", payload(stream))) is Outcome.COMPLETED
    row = next(r for r in items(conn, stream) if r["company_id"] == company)
    types = [s["type"] for s in row["buying_signals"]]
    assert "accounts_category_upgrade" in types and "new_charge" in types


class _InterferingScorer(ScoringAgent):
    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
        result = await super().run(ctx, payload)
        async with ctx.connection() as conn:
            await conn.execute(
                "INSERT INTO stream_items (stream_id, company_id) "
                "SELECT %s, id FROM companies WHERE sic_codes = '{10710}' LIMIT 1",
                (payload.stream_id,))
        return result


async def test_an_item_added_while_scoring_is_scored_and_counted(
    conn: Conn, pool: AsyncConnectionPool, world: dict[str, Any]
) -> None:
    """The output is what the commit hook wrote, so it cannot describe another state."""
    stream = world["stream"]
    assert await run(pool, enqueue(conn, "bot", payload(stream))) is Outcome.COMPLETED
    found_by_bot = len(items(conn, stream))
    task_id = enqueue(conn, "scorer", payload(stream))
    registry = Registry([OpportunityBot(), _InterferingScorer()])
    assert await run(pool, task_id, registry=registry) is Outcome.COMPLETED
    scored = items(conn, stream)
    assert len(scored) == found_by_bot + 1
    assert all(r["scored_at"] is not None for r in scored)
    output = task(conn, task_id)["output"]
    assert output["items_updated"] == found_by_bot + 1
    assert output["high_quality_count"] == sum(1 for r in scored if r["quality_score"] >= 4)


# SQL and Python agree ---------------------------------------------------------------


class _GoalContext:
    """Just enough of an AgentContext for load_stream_goal."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.agent = type("Agent", (), {"org_id": DEFAULT_ORG})()

    def connection(self) -> Any:
        return self.pool.connection()


async def _goal(pool: AsyncConnectionPool, body: Mapping[str, Any]) -> StreamGoal:
    return await load_stream_goal(
        cast(AgentContext, _GoalContext(pool)), StreamTaskInput.model_validate(body))


def _random_company(rng: random.Random, conn: Conn) -> uuid.UUID:
    today = dt.date.today()

    def maybe(value: Any, p: float = 0.7) -> Any:
        return value if rng.random() < p else None

    charges = maybe(rng.randint(0, 5), 0.5)
    return add_company(
        conn,
        name=rng.choice(["ALPHA LTD", "BETA LTD", "GAMMA LTD", " "]),
        status=rng.choice(["Active"] * 6 + ["Dissolved", "Liquidation", None,
                                             "Active - Proposal to Strike off"]),
        address_line1=maybe("1 HIGH STREET"),
        post_town=rng.choice(["LONDON", "MANCHESTER", "ST. ALBANS", "MAIDSTONE", None]),
        county=rng.choice([None, "GREATER MANCHESTER", "KENT", "Kent"]),
        country=rng.choice(["ENGLAND", "UNITED KINGDOM", "", None, "SCOTLAND", "WALES",
                            "IRELAND", "CANADA", "England and Wales"]),
        postcode=rng.choice(["EC1V 2NX", "M1 1AE", "EH1 1YZ", "CF10 1AA", "BT1 1AA",
                             "D02 X285", "M5V 3L9", "SY23 1DE", "AL1 3AA", None]),
        sic_codes=rng.sample(["62012", "63110", "64999", "10710", "25990", "68100", "47910"],
                             rng.randint(0, 3)),
        accounts_category=rng.choice([
            "MICRO ENTITY", "TOTAL EXEMPTION FULL", "SMALL", "MEDIUM", "FULL", "GROUP",
            "DORMANT", "NO ACCOUNTS FILED", "AUDIT EXEMPTION SUBSIDIARY", " small ",
            "INITIAL", None]),
        incorporation_date=maybe(today - dt.timedelta(days=rng.randint(0, 4000)), 0.9),
        accounts_last_made_up=maybe(today - dt.timedelta(days=rng.randint(30, 500))),
        accounts_next_due=maybe(today + dt.timedelta(days=rng.randint(-60, 300))),
        conf_stmt_last_made_up=maybe(today - dt.timedelta(days=rng.randint(0, 400))),
        mortgages_charges=charges,
        mortgages_outstanding=None if charges is None else rng.randint(0, charges),
        previous_names=rng.choice([
            [], [{"name": "OLD LTD",
                  "changed_on": (today - dt.timedelta(days=rng.randint(0, 800))).isoformat()}],
            [{"name": "X", "changed_on": "garbage"}, "junk"], [{"name": "Y"}],
            # the keys are tried in PREVIOUS_NAME_DATE_KEYS order, first found wins
            [{"name": "Z", "ceased_on": (today - dt.timedelta(days=30)).isoformat(),
              "changed_on": (today - dt.timedelta(days=700)).isoformat()}],
            [{"name": "W", "condate": (today - dt.timedelta(days=rng.randint(0, 800))).isoformat(),
              "date": "2001-01-01"}]]),
        website=rng.choice([None, "https://example.com", " "]),
        employee_estimate=maybe(rng.randint(0, 600), 0.3),
        employee_growth_pct=maybe(Decimal(rng.randint(-500, 1000)) / 10, 0.4),
        tech_stack=rng.choice([[], ["React"]]),
        officers_count=rng.choice([None, 0, 3]),
        social_score=rng.choice([None, Decimal(0), Decimal("0.35")]),
        enrichment_status=rng.choice(["not_enriched", "enriched", "not_found", "error"]),
        buying_signals=rng.choice([
            [], [{"type": "hiring", "source": "website"}],
            [{"type": "charges", "source": "register"}, {"type": "tech_adoption"}],
            ["funding_round", {"signal": "expansion"}]]),
    )


_FACTS_SQL = """
SELECT si.id AS item_id, c.id AS company_id, c.name, c.status, c.address_line1,
       c.post_town, c.county, c.country, c.postcode, c.sic_codes, c.incorporation_date,
       c.accounts_category, c.accounts_last_made_up, c.accounts_next_due,
       c.conf_stmt_last_made_up, c.mortgages_charges, c.mortgages_outstanding,
       c.previous_names, c.website, c.employee_estimate, c.employee_growth_pct, c.tech_stack,
       c.officers_count, c.social_score, c.enrichment_status AS company_enrichment_status,
       c.buying_signals AS company_signals, si.enrichment_status AS item_enrichment_status,
       si.buying_signals AS item_signals, si.score_details AS previous_details
FROM stream_items si JOIN companies c ON c.id = si.company_id
WHERE si.stream_id = %s
"""


def _facts(row: Mapping[str, Any]) -> CompanyFacts:
    return CompanyFacts(**{k: v for k, v in row.items() if k not in ("item_id", "company_id")})


def _card(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["criteria_match"], row["data_completeness"], row["enrichment_quality"],
            row["buying_signal_score"], row["quality_score"], row["priority"],
            [(s["type"], Decimal(str(s["strength"])), s["detail"])
             for s in row["buying_signals"] if s.get("source") == "derived"])


def _twin(card: lead_scoring.ScoreCard) -> tuple[Any, ...]:
    return (card.criteria_match, card.data_completeness, card.enrichment_quality,
            card.buying_signal_score, card.quality_score, card.priority,
            [(s.type, s.strength, s.detail) for s in card.signals])


async def test_sql_and_python_score_the_same_rows_alike(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    rng = random.Random(20251121)
    companies = [_random_company(rng, conn) for _ in range(300)]
    body = {"goal_context": {
        "goal_criteria": {"industry": ["SaaS", "Manufacturing", "FinTech"],
                          "location": ["North West", "Scotland", "St Albans", "Kent"],
                          "employee_count": {"min": 10, "max": 200}},
        "target_metrics": {"companies_to_find": 1000, "min_quality_score": 2.5}}}

    # Scoring: items with every kind of history, as the other agents leave them.
    stream = add_stream(conn)
    for company in companies:
        conn.execute(
            "INSERT INTO stream_items (stream_id, company_id, enrichment_status, "
            "buying_signals, score_details) VALUES (%s, %s, %s, %s, %s)",
            (stream, company, rng.choice(["pending", "enriched", "not_found", "failed"]),
             Jsonb(rng.choice([
                 [], [{"type": "new_officers", "source": "companies_house"}],
                 [{"type": "recent_incorporation", "source": "derived", "strength": 0.3},
                  {"type": "hiring", "source": "website"}]])),
             Jsonb(rng.choice([
                 {}, {"category_employees": rng.choice([0, 5, 25, 120]),
                      "mortgages_charges": rng.randint(0, 3)},
                 {"category_employees": "junk"}]))))
    goal = await _goal(pool, {"stream_id": str(stream), **body})
    with conn.cursor(row_factory=dict_row) as cur:
        before = {r["item_id"]: r for r in cur.execute(_FACTS_SQL, (stream,)).fetchall()}
    task_id = enqueue(conn, "scorer", {"stream_id": str(stream), **body})
    assert await run(pool, task_id) is Outcome.COMPLETED
    after = {r["id"]: r for r in items(conn, stream)}
    assert len(after) == 300
    mismatches = [
        (item_id, _card(after[item_id]), _twin(lead_scoring.score(_facts(row), goal)))
        for item_id, row in before.items()
        if _card(after[item_id]) != _twin(lead_scoring.score(_facts(row), goal))
    ]
    assert mismatches == []
    assert len({r["priority"] for r in after.values()}) >= 3  # the data spans the bands

    # Discovery: the bot finds exactly the companies the Python filters accept, with
    # the same estimate.
    discovery = add_stream(conn)
    goal = await _goal(pool, {"stream_id": str(discovery), **body})
    task_id = enqueue(conn, "bot", {"stream_id": str(discovery), **body})
    assert await run(pool, task_id) is Outcome.COMPLETED
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_FACTS_SQL.replace("FROM stream_items si JOIN companies c ON c.id = "
                                       "si.company_id\nWHERE si.stream_id = %s",
                                       "FROM companies c CROSS JOIN (SELECT NULL::uuid AS id, "
                                       "'pending' AS enrichment_status, '[]'::jsonb AS "
                                       "buying_signals, '{}'::jsonb AS score_details) si"))
        everyone = cur.fetchall()
    expected = {}
    for row in everyone:
        facts = _facts(row)
        industry, location, employees = lead_scoring.criteria_credits(facts, goal)
        if lead_scoring.is_active(facts) and industry == 1 and location == 1 and employees:
            expected[row["company_id"]] = _twin(lead_scoring.score(facts, goal))
    found = {r["company_id"]: _card(r) for r in items(conn, discovery)}
    assert task(conn, task_id)["output"]["companies_found"] == len(expected) > 10
    assert found == expected
