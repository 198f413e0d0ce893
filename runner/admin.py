"""Operator queries behind the CLI (``runner.cli``). The daemon's own SQL is in
``runner.store``; these are the reads and admin calls an operator makes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]


def find_agent(conn: Conn, name_or_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, name, agent_type, is_active FROM ai_agents "
            "WHERE id::text = %s OR name = %s ORDER BY id::text = %s DESC LIMIT 1",
            (name_or_id, name_or_id, name_or_id),
        )
        return cur.fetchone()


def enqueue(
    conn: Conn, agent: str, payload: dict[str, Any], priority: int, at: dt.datetime | None
) -> str:
    row = conn.execute(
        "SELECT enqueue_agent_task(%s, %s, %s, coalesce(%s, now()))",
        (agent, Jsonb(payload), priority, at),
    ).fetchone()
    assert row is not None
    return str(row[0])


def retry(conn: Conn, task_id: str) -> bool:
    row = conn.execute("SELECT retry_agent_task(%s)", (task_id,)).fetchone()
    return bool(row and row[0])


def cancel(conn: Conn, task_id: str) -> bool:
    row = conn.execute("SELECT cancel_agent_task(%s)", (task_id,)).fetchone()
    return bool(row and row[0])


_TASK_COLUMNS = """
    t.id, a.name AS agent_name, t.agent_id, t.task_type, t.status, t.priority, t.retry_count,
    t.max_retries, t.scheduled_for, t.created_at, t.started_at, t.completed_at,
    t.error_message, t.trigger, t.workflow_run_id, t.parent_task_ids
"""


def list_tasks(
    conn: Conn, *, status: str | None, agent: str | None, limit: int
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_TASK_COLUMNS} FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            "WHERE (%(status)s::text IS NULL OR t.status = %(status)s) "
            "AND (%(agent)s::text IS NULL OR a.name = %(agent)s OR a.id::text = %(agent)s) "
            "ORDER BY t.created_at DESC LIMIT %(limit)s",
            {"status": status, "agent": agent, "limit": max(1, min(limit, 10000))},
        )
        return cur.fetchall()


def show_task(conn: Conn, task_id: str) -> dict[str, Any] | None:
    """The task, its attempts (with their LLM figures), its log lines and, when it
    belongs to a workflow run, that run's tasks with their parents."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_TASK_COLUMNS}, t.payload, t.output FROM agent_tasks t "
            "JOIN ai_agents a ON a.id = t.agent_id WHERE t.id = %s",
            (task_id,),
        )
        task = cur.fetchone()
        if task is None:
            return None
        cur.execute(
            "SELECT id, attempt, status, started_at, completed_at, duration_ms, error_message, "
            "output_data, metrics, "
            # The executor writes the attempt's LLM totals into metrics (CONTRACT.md);
            # they are pulled out so that a table can show them without parsing JSON.
            "(metrics ->> 'llm_calls')::int AS llm_calls, "
            "(metrics ->> 'input_tokens')::bigint AS input_tokens, "
            "(metrics ->> 'output_tokens')::bigint AS output_tokens, "
            "(metrics ->> 'cost_usd')::numeric AS cost_usd "
            "FROM agent_executions WHERE task_id = %s ORDER BY attempt",
            (task_id,),
        )
        executions = cur.fetchall()
        cur.execute(
            "SELECT id, created_at, log_type, message, metadata FROM agent_task_logs "
            "WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        logs = cur.fetchall()
    workflow = _workflow_of(conn, task) if task["workflow_run_id"] else None
    return {"task": task, "executions": executions, "logs": logs, "workflow": workflow}


def _workflow_of(conn: Conn, task: dict[str, Any]) -> dict[str, Any]:
    """The workflow run a task belongs to: the run, every step of it (``workflow_run_tree``:
    steps not started yet included, with the reason), and the steps that are the
    task's parents and children."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, stream_id, trigger, status, priority, error_message, created_at, "
            "completed_at FROM workflow_runs WHERE id = %s",
            (task["workflow_run_id"],),
        )
        run = cur.fetchone()
        cur.execute(
            "SELECT agent_id, agent_name, depth, execution_order, status, task_id, trigger, "
            "parent_task_ids, parent_agents, note, enqueued_at, completed_at "
            "FROM workflow_run_tree WHERE workflow_run_id = %s "
            "ORDER BY depth NULLS LAST, execution_order, agent_name",
            (task["workflow_run_id"],),
        )
        steps = cur.fetchall()
    return {
        "run_id": task["workflow_run_id"],
        "run": run,
        "steps": steps,
        "parents": [s for s in steps if s["task_id"] in task["parent_task_ids"]],
        "children": [s for s in steps if task["agent_name"] in s["parent_agents"]],
    }


def status(conn: Conn) -> dict[str, Any]:
    """What seed 004's task-runner status endpoint shows, for the whole cluster."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM runner_workers ORDER BY started_at")
        daemons = cur.fetchall()
        cur.execute("SELECT * FROM agent_task_stats")
        stats = cur.fetchone() or {}
        cur.execute("SELECT paused, updated_at FROM runner_control")
        control = cur.fetchone() or {"paused": False, "updated_at": None}
        cur.execute(
            f"SELECT {_TASK_COLUMNS} FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            "ORDER BY t.created_at DESC LIMIT 10"
        )
        recent = cur.fetchall()
    live = [d for d in daemons if not d["stopping"]]
    if not live:
        state = "stopped"
    elif control["paused"]:
        state = "paused"
    else:
        state = "running"
    intervals = [d["poll_interval_seconds"] for d in live]
    return {
        # The seed's "runner" block (its polling_interval is in milliseconds), summed
        # over the live daemons.
        "runner": {
            "status": state,
            "daemons": len(live),
            "polling_interval": round(min(intervals) * 1000) if intervals else None,
            "max_concurrent_tasks": sum(d["concurrency"] for d in live),
            "in_flight": sum(d["in_flight"] for d in live),
        },
        "paused": control["paused"],
        "paused_changed_at": control["updated_at"],
        "daemons": daemons,
        "stats": stats,
        "recent_tasks": recent,
    }


# -- logs ------------------------------------------------------------------------------


def task_exists(conn: Conn, task_id: str) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM agent_tasks WHERE id = %s)",
                       (task_id,)).fetchone()
    return bool(row and row[0])


_LOG_COLUMNS = "l.id, l.task_id, a.name AS agent_name, l.created_at, l.log_type, l.message, " \
    "l.metadata"


def recent_logs(conn: Conn, *, task_id: str | None, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` log lines (of one task, or of all), oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT * FROM (SELECT {_LOG_COLUMNS} FROM agent_task_logs l "
            "LEFT JOIN agent_tasks t ON t.id = l.task_id "
            "LEFT JOIN ai_agents a ON a.id = t.agent_id "
            "WHERE %(task)s::uuid IS NULL OR l.task_id = %(task)s::uuid "
            "ORDER BY l.id DESC LIMIT %(limit)s) last ORDER BY id",
            {"task": task_id, "limit": limit},
        )
        return cur.fetchall()


def logs_after(conn: Conn, *, task_id: str | None, after_id: int) -> list[dict[str, Any]]:
    """Log lines newer than ``after_id``, oldest first.

    ``logs --follow`` reads by id range rather than by the notified ids: a line whose
    notification was coalesced or arrived out of order is still printed, exactly once.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_LOG_COLUMNS} FROM agent_task_logs l "
            "LEFT JOIN agent_tasks t ON t.id = l.task_id "
            "LEFT JOIN ai_agents a ON a.id = t.agent_id "
            "WHERE l.id > %(after)s AND (%(task)s::uuid IS NULL OR l.task_id = %(task)s::uuid) "
            "ORDER BY l.id LIMIT 10000",
            {"task": task_id, "after": after_id},
        )
        return cur.fetchall()


LOG_CHANNEL = "agent_runner_logs"


def listen_for_logs(conn: Conn) -> None:
    conn.execute(f"LISTEN {LOG_CHANNEL}")


# -- agents and schedules --------------------------------------------------------------

_AGENT_COLUMNS = """
    a.id, a.name, a.agent_type, a.is_active, a.schedule_cron, a.schedule_timezone,
    a.description, a.model, a.max_retries, a.timeout_seconds, a.created_at,
    p.total_executions, p.successful_executions, p.failed_executions,
    p.average_execution_time_ms, p.success_rate, p.last_executed_at
"""


def list_agents(conn: Conn) -> list[dict[str, Any]]:
    """Every agent with its seed-002 performance figures (``agent_performance``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_AGENT_COLUMNS} FROM ai_agents a "
            "JOIN agent_performance p ON p.agent_id = a.id ORDER BY a.name, a.id"
        )
        return cur.fetchall()


def show_agent(conn: Conn, name_or_id: str) -> dict[str, Any] | None:
    found = find_agent(conn, name_or_id)
    if found is None:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_AGENT_COLUMNS}, a.configuration, a.instructions_prompt, a.tool_names, "
            "a.max_agent_steps FROM ai_agents a "
            "JOIN agent_performance p ON p.agent_id = a.id WHERE a.id = %s",
            (found["id"],),
        )
        agent = cur.fetchone()
        cur.execute(
            "SELECT s.id AS stream_id, s.name AS stream_name, sa.assignment_role, "
            "sa.execution_order, sa.is_active, sa.auto_execute, sa.depends_on_agent_ids, "
            "sa.total_executions, sa.last_executed_at FROM stream_agent_assignments sa "
            "JOIN streams s ON s.id = sa.stream_id WHERE sa.agent_id = %s "
            "ORDER BY s.created_at DESC LIMIT 50",
            (found["id"],),
        )
        assignments = cur.fetchall()
        cur.execute(
            "SELECT coalesce(sum((metrics ->> 'llm_calls')::bigint), 0) AS llm_calls, "
            "coalesce(sum((metrics ->> 'cost_usd')::numeric), 0) AS llm_cost_usd "
            "FROM agent_executions WHERE agent_id = %s",
            (found["id"],),
        )
        llm = cur.fetchone()
        cur.execute(
            f"SELECT {_TASK_COLUMNS} FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            "WHERE t.agent_id = %s ORDER BY t.created_at DESC LIMIT 10",
            (found["id"],),
        )
        recent = cur.fetchall()
    assert agent is not None and llm is not None
    agent.update(llm)
    return {"agent": agent, "assignments": assignments, "recent_tasks": recent}


def set_agent_active(conn: Conn, name_or_id: str, active: bool) -> tuple[str, bool] | None:
    """Enable or disable an agent; returns its name and whether it was active before,
    or None when there is no such agent."""
    found = find_agent(conn, name_or_id)
    if found is None:
        return None
    conn.execute(
        "UPDATE ai_agents SET is_active = %s, updated_at = now() WHERE id = %s",
        (active, found["id"]),
    )
    return str(found["name"]), bool(found["is_active"])


def list_schedules(conn: Conn) -> list[dict[str, Any]]:
    """Agents with a cron schedule, and their last fire (``cron_fires``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.id, a.name, a.agent_type, a.schedule_cron, a.schedule_timezone, "
            "a.is_active, (SELECT max(f.fire_time) FROM cron_fires f WHERE f.agent_id = a.id) "
            "AS last_fire, (SELECT f.task_id FROM cron_fires f WHERE f.agent_id = a.id "
            "ORDER BY f.fire_time DESC LIMIT 1) AS last_task_id "
            "FROM ai_agents a WHERE a.schedule_cron IS NOT NULL ORDER BY a.name, a.id"
        )
        return cur.fetchall()


# -- pause / resume --------------------------------------------------------------------


def set_paused(conn: Conn, paused: bool) -> bool:
    """Set the cluster-wide pause switch; returns the previous value. The row's
    trigger NOTIFYs ``agent_runner_control``, which every daemon listens on."""
    with conn.transaction():
        row = conn.execute("SELECT paused FROM runner_control FOR UPDATE").fetchone()
        conn.execute("UPDATE runner_control SET paused = %s, updated_at = now()", (paused,))
    return bool(row and row[0])


def live_daemon_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM runner_workers WHERE NOT stopping").fetchone()
    return int(row[0]) if row else 0


# -- import and demo -------------------------------------------------------------------


def company_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM companies").fetchone()
    return int(row[0]) if row else 0


class DemoSetupError(Exception):
    """The demo's agents cannot be used as they are; the message says why."""


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
    agents: Sequence[tuple[str, str, str]],
) -> DemoSetup:
    """Create (or reuse, by name) the agents, create a stream with the goal, assign
    the agents in a chain (each depends on the one before) and trigger the workflow,
    all in one transaction: a failure leaves nothing half made."""
    notes: list[str] = []
    agent_ids: list[str] = []
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        for name, agent_type, _role in agents:
            cur.execute(
                "INSERT INTO ai_agents (name, agent_type, description) VALUES (%s, %s, %s) "
                "ON CONFLICT (org_id, name) DO NOTHING RETURNING id",
                (name, agent_type, "created by `agent-runner demo`"),
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
            agent_ids.append(str(agent["id"]))
        cur.execute(
            "INSERT INTO streams (name, description, goal_criteria, target_metrics) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (stream_name, "seed 004's Discovery -> Enrichment -> Scoring example",
             Jsonb(goal_criteria), Jsonb(target_metrics)),
        )
        stream = cur.fetchone()
        assert stream is not None
        for order, ((_name, _type, role), agent_id) in enumerate(
                zip(agents, agent_ids, strict=True), 1):
            cur.execute(
                "INSERT INTO stream_agent_assignments (stream_id, agent_id, assignment_role, "
                "execution_order, auto_execute, depends_on_agent_ids) "
                "VALUES (%s, %s, %s, %s, true, %s::uuid[])",
                (stream["id"], agent_id, role, order, agent_ids[order - 2:order - 1]),
            )
        cur.execute("SELECT trigger_stream_workflow(%s, 'manual') AS run_id", (stream["id"],))
        run = cur.fetchone()
        assert run is not None
    return DemoSetup(stream_id=str(stream["id"]), run_id=str(run["run_id"]),
                     agent_ids=agent_ids, notes=notes)


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
