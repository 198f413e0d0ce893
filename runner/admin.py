"""Operator queries behind the CLI (``runner.cli``). The daemon's own SQL is in
``runner.store``; these are the reads and admin calls an operator makes."""

from __future__ import annotations

import datetime as dt
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
            "output_data, metrics FROM agent_executions WHERE task_id = %s ORDER BY attempt",
            (task_id,),
        )
        executions = cur.fetchall()
        cur.execute(
            "SELECT id, created_at, log_type, message, metadata FROM agent_task_logs "
            "WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        logs = cur.fetchall()
    return {"task": task, "executions": executions, "logs": logs}


def status(conn: Conn) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM runner_workers ORDER BY started_at")
        daemons = cur.fetchall()
        cur.execute("SELECT * FROM agent_task_stats")
        stats = cur.fetchone() or {}
        cur.execute("SELECT paused FROM runner_control")
        control = cur.fetchone() or {"paused": False}
        cur.execute(
            f"SELECT {_TASK_COLUMNS} FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            "ORDER BY t.created_at DESC LIMIT 10"
        )
        recent = cur.fetchall()
    return {
        "paused": control["paused"],
        "daemons": daemons,
        "stats": stats,
        "recent_tasks": recent,
    }
