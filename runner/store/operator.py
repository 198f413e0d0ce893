"""Operator queries behind the CLI (``runner.cli``): the reads and admin calls an
operator makes, on the CLI's synchronous connection. Queries the daemon also runs are
imported from their own module here, never written twice."""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg import sql
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
    """The newest tasks, optionally of one status and of one agent (name or id).

    The agent is resolved first, so that the task query compares ``t.agent_id`` with a
    value: the planner can then walk an index in ``created_at`` order (the agent's, the
    status's or the creation index, whichever its statistics say is shortest) instead
    of joining every task of the history to its agent.
    """
    params: dict[str, Any] = {"status": status, "limit": max(1, min(limit, 10000))}
    status_filter = "" if status is None else "AND t.status = %(status)s "
    if agent is None:
        agent_filter = ""
    else:
        agent_ids = [row[0] for row in conn.execute(
            "SELECT id FROM ai_agents WHERE name = %s OR id::text = %s", (agent, agent))]
        if not agent_ids:
            return []
        # One id (the usual case) as a plain equality: an index on (agent_id,
        # created_at) then yields the rows already in order.
        agent_filter = "AND t.agent_id = %(agent)s " if len(agent_ids) == 1 else \
            "AND t.agent_id = ANY(%(agent)s) "
        params["agent"] = agent_ids[0] if len(agent_ids) == 1 else agent_ids
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_TASK_COLUMNS} FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            f"WHERE true {status_filter}{agent_filter}"
            "ORDER BY t.created_at DESC LIMIT %(limit)s",
            params,
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


# -- creating agents; streams and their workflows --------------------------------------


def create_agent(conn: Conn, *, name: str, agent_type: str, columns: dict[str, Any]) -> str:
    """Insert an agent; ``columns`` holds only what the operator gave (the table's
    defaults fill the rest). The database checks the type, the schedule and the ranges."""
    values = {"name": name, "agent_type": agent_type, **columns}
    if "configuration" in values:
        values["configuration"] = Jsonb(values["configuration"])
    statement = sql.SQL("INSERT INTO ai_agents ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(sql.Identifier(column) for column in values),
        sql.SQL(", ").join(sql.Placeholder(column) for column in values),
    )
    row = conn.execute(statement, values).fetchone()
    assert row is not None
    return str(row[0])


def find_streams(conn: Conn, name_or_id: str) -> list[dict[str, Any]]:
    """The stream with this id, else the streams with this name (oldest first)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, name FROM streams WHERE id::text = lower(%(s)s) OR name = %(s)s "
            "ORDER BY id::text = lower(%(s)s) DESC, created_at, id",
            {"s": name_or_id},
        )
        return cur.fetchall()


_STREAM_SUMMARY = """
SELECT s.id, s.name, s.schedule_cron, s.schedule_timezone,
       (SELECT count(*) FROM stream_agent_assignments sa
        WHERE sa.stream_id = s.id AND sa.is_active) AS agents,
       p.items, p.target, p.enriched, p.scored, p.qualified, p.critical, p.high, p.medium,
       p.low, p.last_run_id, p.last_run_status, p.last_run_at, s.created_at
FROM streams s JOIN stream_progress p ON p.stream_id = s.id
"""


def list_streams(conn: Conn) -> list[dict[str, Any]]:
    """Every stream with its schedule, its active agents, its progress and last run."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_STREAM_SUMMARY + "ORDER BY s.name, s.created_at, s.id")
        return cur.fetchall()


def create_stream(
    conn: Conn, *, name: str, description: str, goal_criteria: dict[str, Any],
    target_metrics: dict[str, Any],
) -> str:
    row = conn.execute(
        "INSERT INTO streams (name, description, goal_criteria, target_metrics) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        (name, description, Jsonb(goal_criteria), Jsonb(target_metrics)),
    ).fetchone()
    assert row is not None
    return str(row[0])


def show_stream(conn: Conn, stream_id: str) -> dict[str, Any] | None:
    """A stream: its definition and schedule, its agents in order with their
    dependencies, its progress, its recent runs and scheduled fires."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT s.id, s.name, s.description, s.goal_criteria, s.target_metrics, "
            "s.schedule_cron, s.schedule_timezone, s.created_at FROM streams s WHERE s.id = %s",
            (stream_id,),
        )
        stream = cur.fetchone()
        if stream is None:
            return None
        cur.execute(
            "SELECT a.id AS agent_id, a.name AS agent_name, a.agent_type, sa.assignment_role, "
            "sa.execution_order, sa.is_active, sa.auto_execute, a.is_active AS agent_is_active, "
            "ARRAY(SELECT d.name FROM unnest(sa.depends_on_agent_ids) WITH ORDINALITY u(id, n) "
            "      JOIN ai_agents d ON d.id = u.id ORDER BY u.n) AS depends_on, "
            "sa.total_executions, sa.last_executed_at "
            "FROM stream_agent_assignments sa JOIN ai_agents a ON a.id = sa.agent_id "
            "WHERE sa.stream_id = %s ORDER BY sa.execution_order, a.name",
            (stream_id,),
        )
        assignments = cur.fetchall()
        cur.execute("SELECT * FROM stream_progress WHERE stream_id = %s", (stream_id,))
        progress = cur.fetchone()
        cur.execute(
            "SELECT r.id, r.trigger, r.status, ra.name AS root_agent, r.created_at, "
            "r.completed_at, r.error_message FROM workflow_runs r "
            "LEFT JOIN ai_agents ra ON ra.id = r.root_agent_id "
            "WHERE r.stream_id = %s ORDER BY r.created_at DESC, r.id DESC LIMIT 10",
            (stream_id,),
        )
        runs = cur.fetchall()
        cur.execute(
            "SELECT fire_time, outcome, workflow_run_id, note FROM stream_cron_fires "
            "WHERE stream_id = %s ORDER BY fire_time DESC LIMIT 10",
            (stream_id,),
        )
        fires = cur.fetchall()
    return {"stream": stream, "agents": assignments, "progress": progress, "runs": runs,
            "scheduled_fires": fires}


def assign_agent(
    conn: Conn, *, stream_id: str, agent_id: str, after: list[str], order: int | None,
    role: str | None,
) -> dict[str, Any]:
    """Assign an agent to a stream after the agents in ``after`` (ids), or change an
    assignment that exists: its dependencies become ``after``, its order and role change
    when given, and it is active again. The database refuses an unknown dependency or a
    cycle. A new assignment without an order comes after the stream's last."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO stream_agent_assignments AS sa (stream_id, agent_id, assignment_role, "
            "execution_order, depends_on_agent_ids) "
            "VALUES (%(stream)s, %(agent)s, coalesce(%(role)s, 'primary'), "
            "coalesce(%(order)s, (SELECT coalesce(max(x.execution_order), 0) + 1 "
            "FROM stream_agent_assignments x WHERE x.stream_id = %(stream)s)), "
            "%(after)s::uuid[]) "
            "ON CONFLICT (stream_id, agent_id) DO UPDATE "
            "SET depends_on_agent_ids = EXCLUDED.depends_on_agent_ids, "
            "execution_order = coalesce(%(order)s, sa.execution_order), "
            "assignment_role = coalesce(%(role)s, sa.assignment_role), is_active = true "
            "RETURNING (xmax = 0) AS created, execution_order, assignment_role",
            {"stream": stream_id, "agent": agent_id, "after": after, "order": order,
             "role": role},
        )
        row = cur.fetchone()
    assert row is not None
    return row


def workflow_payload(conn: Conn, *, stream_id: str, agent_id: str) -> tuple[str, dict[str, Any]]:
    """(agent type, the payload a run of the stream gives the agent as a step)."""
    row = conn.execute(
        "SELECT a.agent_type, runner_workflow_payload(a.agent_type, a.configuration, s.id, "
        "jsonb_build_object('goal_criteria', s.goal_criteria, "
        "'target_metrics', s.target_metrics)) "
        "FROM ai_agents a, streams s WHERE a.id = %s AND s.id = %s",
        (agent_id, stream_id),
    ).fetchone()
    assert row is not None
    return str(row[0]), dict(row[1])


def trigger_stream(conn: Conn, stream_id: str, priority: int) -> tuple[str, list[dict[str, Any]]]:
    """Start a run of the stream's workflow; returns its id and its steps."""
    row = conn.execute("SELECT trigger_stream_workflow(%s, 'manual', %s)",
                       (stream_id, priority)).fetchone()
    assert row is not None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(workflows.TREE, (row[0],))
        steps = cur.fetchall()
    return str(row[0]), steps


def schedule_stream(
    conn: Conn, stream_id: str, schedule_cron: str | None, schedule_timezone: str | None,
) -> dict[str, Any]:
    """Set (or, with ``None``, remove) a stream's schedule; every daemon reloads it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "UPDATE streams SET schedule_cron = %s, "
            "schedule_timezone = coalesce(%s, schedule_timezone), updated_at = now() "
            "WHERE id = %s RETURNING name, schedule_cron, schedule_timezone",
            (schedule_cron, schedule_timezone, stream_id),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def task_workflow_run(conn: Conn, task_id: str) -> dict[str, Any] | None:
    """The run a task belongs to (its id and stream's name), or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT r.id, s.name AS stream_name FROM agent_tasks t "
            "JOIN workflow_runs r ON r.id = t.workflow_run_id "
            "JOIN streams s ON s.id = r.stream_id WHERE t.id = %s",
            (task_id,),
        )
        return cur.fetchone()


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
