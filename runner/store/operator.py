"""Operator queries behind the CLI (``runner.cli``): the reads and admin calls an
operator makes, on the CLI's synchronous connection. Queries the daemon also runs are
imported from their own module here, never written twice."""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from runner.store import SyncConn as Conn
from runner.store import channels, workflows


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
        cur.execute(workflows.RUN, (task["workflow_run_id"],))
        run = cur.fetchone()
        cur.execute(workflows.TREE, (task["workflow_run_id"],))
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


def listen_for_logs(conn: Conn) -> None:
    conn.execute(f"LISTEN {channels.LOGS}")


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
