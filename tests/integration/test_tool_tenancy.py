"""Tenant isolation of the ``llm_agent`` tools: an agent of one organization, driven by
a scripted model through the real executor and the Anthropic stand-in, asks for the
other organization's stream, stream items and companies and tries to save insights into
them. It gets nothing (the same answer as for rows that do not exist), the other
organization's rows are unchanged, and the same calls on its own data work.

Both directions are run, so the default organization is not special either way.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agents.llm_agent import LLMAgent
from runner.outcomes import Outcome
from runner.plugins import Registry
from runner.settings import Settings
from tests.harness import FAST_LLM_POLICY as FAST
from tests.harness import run_task_inline, task_state
from tests.standins.anthropic_api import AnthropicStandIn, RecordedRequest, text, tool_use

Conn = psycopg.Connection[tuple[Any, ...]]

TOOLS = ("list_companies", "search_companies", "get_company", "list_stream_items",
         "save_insight")


@dataclasses.dataclass(frozen=True)
class Tenant:
    org_id: str
    stream_id: str
    company_number: str
    company_name: str
    agent_name: str


def _one(conn: Conn, sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _tenant(conn: Conn, org_id: str, *, number: str, name: str, agent: str) -> Tenant:
    """One organization's data: a Leeds software company (so a search by town or SIC
    code would find both organizations' companies if it were not scoped), a stream
    holding it as a scored item, an insight already saved, and an llm_agent."""
    company = _one(
        conn,
        "INSERT INTO companies (org_id, company_number, name, post_town, sic_codes, status, "
        "website, tech_stack) VALUES (%s, %s, %s, 'LEEDS', '{62012}', 'Active', "
        "'https://example.invalid', '{React}') RETURNING id",
        (org_id, number, name),
    )
    stream = _one(
        conn,
        "INSERT INTO streams (org_id, name) VALUES (%s, %s) RETURNING id",
        (org_id, f"{name} prospects"),
    )
    conn.execute(
        "INSERT INTO stream_items (org_id, stream_id, company_id, quality_score, priority, "
        "position) VALUES (%s, %s, %s, 4.2, 'high', 1)",
        (org_id, stream, company),
    )
    conn.execute(
        "INSERT INTO stream_insights (org_id, stream_id, company_id, title) "
        "VALUES (%s, %s, %s, %s)",
        (org_id, stream, company, f"{name}: existing insight"),
    )
    conn.execute(
        "INSERT INTO ai_agents (org_id, name, agent_type, model, tool_names, "
        "max_agent_steps) VALUES (%s, %s, 'llm_agent', 'claude-sonnet-4-6', %s, 20)",
        (org_id, agent, list(TOOLS)),
    )
    return Tenant(str(org_id), str(stream), number, name, agent)


@pytest.fixture
def tenants(conn: Conn) -> tuple[Tenant, Tenant]:
    default_org = _one(conn, "SELECT runner_default_org_id()")
    other_org = _one(conn, "INSERT INTO organizations (name) VALUES ('bravo') RETURNING id")
    alpha = _tenant(conn, default_org, number="01234567", name="ALPHA SOFTWARE LTD",
                    agent="alpha-analyst")
    bravo = _tenant(conn, other_org, number="SC123456", name="BRAVO SECRET LTD",
                    agent="bravo-analyst")
    return alpha, bravo


def _snapshot(conn: Conn, org_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every business row the organization owns, as stored."""
    tables = {
        "companies": "SELECT * FROM companies WHERE org_id = %s ORDER BY id",
        "streams": "SELECT * FROM streams WHERE org_id = %s ORDER BY id",
        "stream_items": "SELECT i.* FROM stream_items i JOIN streams s ON s.id = i.stream_id "
                        "WHERE s.org_id = %s ORDER BY i.id",
        "stream_insights": "SELECT * FROM stream_insights WHERE org_id = %s OR stream_id IN "
                           "(SELECT id FROM streams WHERE org_id = %s) ORDER BY id",
    }
    snapshot = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for table, sql in tables.items():
            cur.execute(sql, (org_id,) * sql.count("%s"))
            snapshot[table] = cur.fetchall()
    return snapshot


def _tool_result(request: RecordedRequest) -> dict[str, Any]:
    last = request.body["messages"][-1]
    [result] = [block for block in last["content"] if block["type"] == "tool_result"]
    return dict(result)


@pytest.mark.parametrize("direction", ["default org probes the other",
                                       "other org probes the default"])
async def test_tools_see_and_write_only_their_own_organization(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings,
    tenants: tuple[Tenant, Tenant], direction: str,
) -> None:
    own, other = tenants if direction.startswith("default") else tenants[::-1]
    before = _snapshot(conn, other.org_id)
    assert before["stream_items"] and before["stream_insights"]

    api.enqueue(
        # The other organization's data, by id, by number and by search.
        tool_use("list_stream_items", {"stream_id": other.stream_id}),
        tool_use("get_company", {"company_number": other.company_number}),
        tool_use("search_companies", {"post_town": "Leeds", "sic_code": "62012"}),
        tool_use("search_companies", {"name": other.company_name[:5]}),
        tool_use("list_companies", {"limit": 50}),
        tool_use("save_insight", {"title": "planted", "stream_id": other.stream_id}),
        tool_use("save_insight", {"title": "planted", "company_number": other.company_number}),
        # Its own data, the same ways.
        tool_use("list_stream_items", {"stream_id": own.stream_id}),
        tool_use("get_company", {"company_number": own.company_number}),
        tool_use("save_insight", {"title": "own insight", "stream_id": own.stream_id,
                                  "company_number": own.company_number}),
        text("Done."),
    )
    task_id = _one(conn, "SELECT enqueue_agent_task(%s, %s::jsonb)",
                   (own.agent_name, json.dumps({"prompt": "Show me everything."})))

    outcome = await run_task_inline(pool, task_id, registry=Registry([LLMAgent(policy=FAST)]),
                                    settings=settings)

    assert outcome is Outcome.COMPLETED, task_state(conn, task_id)
    results = [_tool_result(request) for request in api.message_requests()[1:]]
    (other_items, other_company, by_town_and_sic, by_name, listed, insight_in_stream,
     insight_on_company, own_items, own_company, own_insight) = results

    # Another organization's stream and company read exactly like missing ones.
    assert other_items == {**other_items, "is_error": True,
                           "content": f"no stream with id {other.stream_id}"}
    assert other_company == {**other_company, "is_error": True,
                             "content": f"no company with number {other.company_number}"}
    assert insight_in_stream == {**insight_in_stream, "is_error": True,
                                 "content": f"no stream with id {other.stream_id}"}
    assert insight_on_company == {
        **insight_on_company, "is_error": True,
        "content": f"no company with number {other.company_number}"}
    # Searches and listings hold only the agent's own companies.
    for result, expected in ((by_town_and_sic, [own.company_name]), (by_name, []),
                             (listed, [own.company_name])):
        assert "is_error" not in result
        assert [c["name"] for c in json.loads(result["content"])["companies"]] == expected
    # Nothing of the other organization reached the model, in any tool result (the
    # refusals only echo the id or number the model itself sent).
    for result in results:
        content = result["content"]
        assert other.company_name not in content and other.org_id not in content
        if not result.get("is_error"):
            assert other.company_number not in content and other.stream_id not in content

    # The agent's own data works through the same tools.
    assert [(i["name"], i["priority"]) for i in json.loads(own_items["content"])["items"]] == [
        (own.company_name, "high")]
    assert json.loads(own_company["content"])["name"] == own.company_name
    assert json.loads(own_insight["content"])["saved"] is True

    # Only the own insight was written, to the agent's organization and stream.
    written = conn.execute(
        "SELECT i.org_id::text, i.stream_id::text, c.company_number, i.title "
        "FROM stream_insights i LEFT JOIN companies c ON c.id = i.company_id "
        "WHERE i.task_id = %s", (task_id,),
    ).fetchall()
    assert written == [(own.org_id, own.stream_id, own.company_number, "own insight")]
    assert _snapshot(conn, other.org_id) == before
