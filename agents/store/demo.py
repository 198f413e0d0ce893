"""The demo's SQL (``agent-runner demo``): point the demo companies at the demo's
websites, set up seed 004's example workflow, follow it and the scout's run, and read
the report."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]


def company_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM companies").fetchone()
    return int(row[0]) if row else 0


# Demo websites: http://127.0.0.1:PORT/demo-sites/<number>/ (agents/demo_sites.py). The
# port changes from run to run; the pattern is how the demo knows its own companies.
_DEMO_SITE = r"^http://127\.0\.0\.1:[0-9]+/demo-sites/"
_PLACEHOLDER_BASE = "http://127.0.0.1:0/demo-sites/"


@dataclasses.dataclass(frozen=True, slots=True)
class DemoCompany:
    id: UUID
    company_number: str
    name: str
    sic_codes: list[str]
    incorporation_date: dt.date | None
    accounts_category: str | None
    accounts_last_made_up: dt.date | None
    conf_stmt_last_made_up: dt.date | None


def claim_demo_companies(conn: Conn) -> int:
    """Right after the demo loaded its generated companies into an empty table: mark
    them as the demo's by giving each a demo website address (its port is set by
    :func:`point_demo_websites`). Returns how many."""
    cur = conn.execute(
        "UPDATE companies SET website = %s || company_number || '/', updated_at = now() "
        "WHERE website IS NULL",
        (_PLACEHOLDER_BASE,),
    )
    return cur.rowcount


def demo_companies(conn: Conn) -> list[DemoCompany]:
    """The companies whose website is a demo site, with what their sites and filing
    histories are made from."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, company_number, name, sic_codes, incorporation_date, "
            "accounts_category, accounts_last_made_up, conf_stmt_last_made_up "
            "FROM companies WHERE website ~ %s ORDER BY company_number",
            (_DEMO_SITE,),
        )
        return [DemoCompany(**row) for row in cur.fetchall()]


def point_demo_websites(conn: Conn, base_url: str) -> int:
    """Rewrite the demo companies' websites to this run's server (``base_url`` ends
    in ``/demo-sites/``). Returns how many."""
    cur = conn.execute(
        "UPDATE companies SET website = regexp_replace(website, %s, %s) "
        "WHERE website ~ %s AND NOT starts_with(website, %s)",
        (_DEMO_SITE, base_url, _DEMO_SITE, base_url),
    )
    return cur.rowcount


class DemoSetupError(Exception):
    """The demo's agents cannot be used as they are; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoAgent:
    name: str
    agent_type: str
    #: assignment_role in the stream's workflow; None: created, not assigned
    role: str | None
    #: keys the demo needs in the agent's configuration (merged into what it has)
    configuration: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class DemoSetup:
    stream_id: str
    run_id: str
    agent_ids: list[str]
    notes: list[str]


def start_demo_workflow(
    conn: Conn,
    *,
    stream_name: str,
    goal_criteria: dict[str, Any],
    target_metrics: dict[str, Any],
    agents: Sequence[DemoAgent],
) -> DemoSetup:
    """Create (or reuse, by name) the agents, create a stream with the goal, assign
    the agents that have a role in a chain (each depends on the one before) and trigger
    the workflow, all in one transaction: a failure leaves nothing half made. A reused
    agent gets the configuration keys the demo needs merged into its own."""
    notes: list[str] = []
    agent_ids: list[str] = []
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        for agent_spec in agents:
            name, agent_type = agent_spec.name, agent_spec.agent_type
            cur.execute(
                "INSERT INTO ai_agents (name, agent_type, description, configuration) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (org_id, name) DO NOTHING RETURNING id",
                (name, agent_type, "created by `agent-runner demo`",
                 Jsonb(dict(agent_spec.configuration))),
            )
            if cur.fetchone() is not None:
                notes.append(f"created agent {name} ({agent_type})")
            cur.execute(
                "SELECT id, agent_type, is_active FROM ai_agents "
                "WHERE org_id = runner_default_org_id() AND name = %s",
                (name,),
            )
            agent = cur.fetchone()
            assert agent is not None
            if agent["agent_type"] != agent_type:
                raise DemoSetupError(
                    f"an agent named {name!r} exists with agent_type "
                    f"{agent['agent_type']!r}, not {agent_type!r}; rename it to run the demo")
            if not agent["is_active"]:
                raise DemoSetupError(
                    f"agent {name} is disabled; `agent-runner agents enable {name}` "
                    "to run the demo")
            if agent_spec.configuration:
                cur.execute(
                    "UPDATE ai_agents SET configuration = configuration || %s "
                    "WHERE id = %s AND NOT configuration @> %s",
                    (Jsonb(dict(agent_spec.configuration)), agent["id"],
                     Jsonb(dict(agent_spec.configuration))),
                )
            agent_ids.append(str(agent["id"]))
        cur.execute(
            "INSERT INTO streams (name, description, goal_criteria, target_metrics) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (stream_name, "seed 004's Discovery -> Enrichment -> Scoring example",
             Jsonb(goal_criteria), Jsonb(target_metrics)),
        )
        stream = cur.fetchone()
        assert stream is not None
        chain = [(spec.role, agent_id) for spec, agent_id in zip(agents, agent_ids, strict=True)
                 if spec.role is not None]
        for order, (role, agent_id) in enumerate(chain, 1):
            cur.execute(
                "INSERT INTO stream_agent_assignments (stream_id, agent_id, assignment_role, "
                "execution_order, auto_execute, depends_on_agent_ids) "
                "VALUES (%s, %s, %s, %s, true, %s::uuid[])",
                (stream["id"], agent_id, role, order,
                 [previous for _, previous in chain[order - 2:order - 1]]),
            )
        cur.execute("SELECT trigger_stream_workflow(%s, 'manual') AS run_id", (stream["id"],))
        run = cur.fetchone()
        assert run is not None
    return DemoSetup(stream_id=str(stream["id"]), run_id=str(run["run_id"]),
                     agent_ids=agent_ids, notes=notes)


def enqueue_task(conn: Conn, agent_name: str, payload: Mapping[str, Any]) -> str:
    row = conn.execute("SELECT enqueue_agent_task(%s, %s)",
                       (agent_name, Jsonb(dict(payload)))).fetchone()
    assert row is not None
    return str(row[0])


def task_progress(conn: Conn, task_id: str) -> dict[str, Any]:
    """One task's state as a workflow step reads (``workflow_progress``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.name AS agent_name, a.agent_type, t.status, t.id AS task_id, "
            "t.error_message AS note, t.output, "
            "(SELECT sum(e.duration_ms) FROM agent_executions e WHERE e.task_id = t.id) "
            "AS duration_ms "
            "FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id WHERE t.id = %s",
            (task_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def workflow_progress(conn: Conn, run_id: str) -> dict[str, Any]:
    """A run's status and, per step, its task's state, output and attempt time."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT status, error_message FROM workflow_runs WHERE id = %s", (run_id,))
        run = cur.fetchone()
        if run is None:
            return {"status": "missing", "error_message": None, "steps": []}
        cur.execute(
            "SELECT w.agent_name, a.agent_type, w.status, w.task_id, w.note, t.output, "
            "(SELECT sum(e.duration_ms) FROM agent_executions e WHERE e.task_id = w.task_id) "
            "AS duration_ms "
            "FROM workflow_run_tree w JOIN ai_agents a ON a.id = w.agent_id "
            "LEFT JOIN agent_tasks t ON t.id = w.task_id "
            "WHERE w.workflow_run_id = %s ORDER BY w.depth NULLS LAST, w.execution_order",
            (run_id,),
        )
        steps = cur.fetchall()
    return {**run, "steps": steps}


def demo_report(conn: Conn, stream_id: str, run_id: str, *, top: int) -> dict[str, Any]:
    """What the demo prints: the stream, its best companies and each agent's figures."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, name, goal_criteria, target_metrics FROM streams WHERE id = %s",
            (stream_id,),
        )
        stream = cur.fetchone()
        cur.execute(
            "SELECT id, status, error_message, created_at, completed_at FROM workflow_runs "
            "WHERE id = %s",
            (run_id,),
        )
        run = cur.fetchone()
        cur.execute(
            "SELECT count(*) AS items, count(*) FILTER (WHERE qualified) AS qualified, "
            "round(avg(quality_score), 2) AS avg_quality_score, "
            "count(*) FILTER (WHERE priority = 'critical') AS critical, "
            "count(*) FILTER (WHERE priority = 'high') AS high, "
            "count(*) FILTER (WHERE priority = 'medium') AS medium, "
            "count(*) FILTER (WHERE priority = 'low') AS low, "
            "count(*) FILTER (WHERE enrichment_status = 'enriched') AS enriched "
            "FROM stream_items WHERE stream_id = %s",
            (stream_id,),
        )
        summary = cur.fetchone()
        cur.execute(
            "SELECT i.position, c.name, c.company_number, c.post_town AS town, "
            "i.quality_score, i.priority, i.qualified, c.employee_estimate, "
            # The strongest three signals, the reader's "why this company".
            # Two agents may record the same kind of signal: one entry per type.
            "ARRAY(SELECT s ->> 'type' FROM jsonb_array_elements(i.buying_signals) s "
            "      GROUP BY s ->> 'type' "
            "      ORDER BY max((s ->> 'strength')::numeric) DESC NULLS LAST, s ->> 'type' "
            "      LIMIT 3) AS key_signals "
            "FROM stream_items i JOIN companies c ON c.id = i.company_id "
            "WHERE i.stream_id = %s "
            "ORDER BY i.position NULLS LAST, i.quality_score DESC NULLS LAST, c.name LIMIT %s",
            (stream_id, top),
        )
        companies = cur.fetchall()
        cur.execute(
            "SELECT a.name AS agent_name, a.agent_type, t.id AS task_id, t.status, "
            "count(e.id) AS executions, sum(e.duration_ms) AS duration_ms, "
            "coalesce(sum((e.metrics ->> 'llm_calls')::int), 0) AS llm_calls, "
            "coalesce(sum((e.metrics ->> 'cost_usd')::numeric), 0) AS cost_usd, t.output "
            "FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            "LEFT JOIN agent_executions e ON e.task_id = t.id "
            "WHERE t.workflow_run_id = %s "
            "GROUP BY a.name, a.agent_type, t.id, t.status, t.output, t.created_at "
            "ORDER BY t.created_at",
            (run_id,),
        )
        agents = cur.fetchall()
    return {"stream": stream, "workflow_run": run, "summary": summary,
            "top_companies": companies, "agents": agents}


def stream_progress(conn: Conn, stream_id: str) -> dict[str, Any]:
    """The stream's row of the ``stream_progress`` view (the demo migrates first)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM stream_progress WHERE stream_id = %s", (stream_id,))
        row = cur.fetchone()
    assert row is not None
    return row


def stream_leads(conn: Conn, stream_id: str) -> list[dict[str, Any]]:
    """The stream's critical and high items, best first, with what explains them."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT i.position, c.name, c.company_number, c.post_town AS town, "
            "i.quality_score, i.priority, i.score_details, i.enrichment_quality, "
            "i.data_completeness, i.buying_signals || CASE WHEN "
            "jsonb_typeof(c.buying_signals) = 'array' THEN c.buying_signals "
            "ELSE '[]'::jsonb END AS buying_signals "
            "FROM stream_items i JOIN companies c ON c.id = i.company_id "
            "WHERE i.stream_id = %s AND i.priority IN ('critical', 'high') "
            "ORDER BY i.position NULLS LAST, i.quality_score DESC, c.name",
            (stream_id,),
        )
        return cur.fetchall()


def stream_insights(conn: Conn, stream_id: str) -> list[dict[str, Any]]:
    """The stream's insights, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT kind, title, body, company_id, task_id, metadata, created_at "
            "FROM stream_insights WHERE stream_id = %s ORDER BY created_at, kind, title",
            (stream_id,),
        )
        return cur.fetchall()
