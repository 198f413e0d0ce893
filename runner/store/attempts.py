"""Attempts: claim a task for one attempt, write its end, its log lines and its LLM
ledger rows, and read what its parents produced.

Fencing: an attempt owns its task while ``agent_tasks.current_execution_id`` names
its execution and both are still ``processing`` / ``running``. Every write that ends
an attempt (finish, hand-back, rescue) locks the task row first, then checks that
ownership in the same statement; a write that finds it gone changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from runner.api import AgentDefinition, LLMCallRecord
from runner.errors import Fenced
from runner.outcomes import Finish
from runner.store import Conn


@dataclasses.dataclass(frozen=True, slots=True)
class StartedAttempt:
    task_id: UUID
    execution_id: UUID
    attempt: int
    job_id: int
    agent: AgentDefinition
    payload: dict[str, Any]
    priority: int
    retry_count: int
    max_retries: int
    scheduled_for: dt.datetime
    started_at: dt.datetime
    workflow_run_id: UUID | None
    parent_task_ids: tuple[UUID, ...]


#: Up to ``%(count)s`` attempt jobs of the delivery engine in one round trip: its own
#: fetch function (``SKIP LOCKED``, priorities, locks) called once per row -- each call
#: depends on its row, so it is evaluated again and sees the jobs the earlier calls took.
#: Run through procrastinate's connector by :class:`runner.delivery.ClaimGate`.
FETCH_JOBS = """
SELECT j.id, j.status, j.task_name, j.priority, j.lock, j.queueing_lock, j.args,
       j.scheduled_at, j.queue_name, j.attempts, j.worker_id
FROM generate_series(1, %(count)s) AS n,
     LATERAL procrastinate_fetch_job_v2(
         CASE WHEN n > 0 THEN %(queues)s::varchar[] END, %(worker_id)s) AS j
WHERE j.id IS NOT NULL
"""

_START_ATTEMPT = """
WITH task AS (
    SELECT t.id, t.agent_id, t.org_id, t.payload, t.priority, t.retry_count, t.max_retries,
           t.scheduled_for, t.workflow_run_id, t.parent_task_ids
    FROM agent_tasks t
    WHERE t.id = %(task_id)s AND t.status = 'pending' AND t.job_id = %(job_id)s
    FOR UPDATE
), execution AS (
    INSERT INTO agent_executions (
        agent_id, org_id, stream_id, task_id, attempt, job_id, daemon_id, status,
        started_at, input_data, goal_context)
    SELECT task.agent_id, task.org_id,
           CASE WHEN task.payload->>'stream_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                THEN (SELECT s.id FROM streams s WHERE s.id = (task.payload->>'stream_id')::uuid)
           END,
           task.id,
           (SELECT count(*) + 1 FROM agent_executions e WHERE e.task_id = task.id),
           %(job_id)s, %(daemon_id)s, 'running', clock_timestamp(), task.payload,
           task.payload->'goal_context'
    FROM task
    RETURNING id, attempt, started_at
), claimed AS (
    UPDATE agent_tasks t
    SET status = 'processing', current_execution_id = execution.id,
        started_at = coalesce(t.started_at, execution.started_at), updated_at = now()
    FROM execution
    WHERE t.id = %(task_id)s
)
SELECT execution.id AS execution_id, execution.attempt, execution.started_at,
       task.payload, task.priority, task.retry_count, task.max_retries, task.scheduled_for,
       task.workflow_run_id, task.parent_task_ids,
       a.id AS agent_id, a.org_id, a.name, a.agent_type, a.configuration, a.model,
       a.instructions_prompt, a.tool_names, a.max_agent_steps, a.max_retries AS agent_max_retries,
       a.timeout_seconds, a.is_active
FROM execution, task JOIN ai_agents a ON a.id = task.agent_id
"""


async def start_attempt(
    conn: Conn, *, task_id: UUID, job_id: int, daemon_id: UUID | None
) -> tuple[StartedAttempt, bool] | None:
    """Claim the task for this job's attempt. ``None`` when the job is stale (the task
    was cancelled, or re-queued under another job). The bool is the agent's is_active."""
    # One statement: atomic without an explicit transaction (one round trip).
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _START_ATTEMPT, {"task_id": task_id, "job_id": job_id, "daemon_id": daemon_id}
        )
        row = await cur.fetchone()
    if row is None:
        return None
    agent = AgentDefinition(
        id=row["agent_id"],
        org_id=row["org_id"],
        name=row["name"],
        agent_type=row["agent_type"],
        configuration=row["configuration"],
        model=row["model"],
        instructions_prompt=row["instructions_prompt"],
        tool_names=tuple(row["tool_names"]),
        max_agent_steps=row["max_agent_steps"],
        max_retries=row["agent_max_retries"],
        timeout_seconds=row["timeout_seconds"],
    )
    started = StartedAttempt(
        task_id=task_id,
        execution_id=row["execution_id"],
        attempt=row["attempt"],
        job_id=job_id,
        agent=agent,
        payload=row["payload"],
        priority=row["priority"],
        retry_count=row["retry_count"],
        max_retries=row["max_retries"],
        scheduled_for=row["scheduled_for"],
        started_at=row["started_at"],
        workflow_run_id=row["workflow_run_id"],
        parent_task_ids=tuple(row["parent_task_ids"]),
    )
    return started, bool(row["is_active"])


async def finish_attempt(
    conn: Conn, attempt: StartedAttempt, finish: Finish, *, finish_job: bool = False
) -> int:
    """Write the attempt's end (one statement, atomic on its own). Raises
    :class:`Fenced` when the attempt no longer owns its task; nothing is written then.
    With ``finish_job`` the procrastinate job is marked succeeded in the same statement.
    Returns the execution's duration in ms."""
    cur = await conn.execute(
        "SELECT runner_finish_attempt(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            attempt.task_id,
            attempt.execution_id,
            finish.task_status,
            finish.execution_status,
            finish.spend_retry,
            finish.error,
            Jsonb(finish.output) if finish.output is not None else None,
            Jsonb(finish.summary) if finish.summary is not None else None,
            Jsonb(dict(finish.metrics)),
            float(finish.run_at_delay_seconds),
            attempt.job_id if finish_job else None,
        ),
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        raise Fenced(f"task {attempt.task_id} is no longer owned by {attempt.execution_id}")
    return int(row[0])


async def lock_owned_task(conn: Conn, attempt: StartedAttempt) -> None:
    """Inside a transaction: lock the task row if the attempt still owns it, before
    anything else is written; raise :class:`Fenced` otherwise. (Task first, as the
    rescuer and cancel_agent_task lock it.)"""
    cur = await conn.execute(
        "SELECT 1 FROM agent_tasks WHERE id = %s AND status = 'processing' "
        "AND current_execution_id = %s FOR UPDATE",
        (attempt.task_id, attempt.execution_id),
    )
    if await cur.fetchone() is None:
        raise Fenced(f"task {attempt.task_id} is no longer owned by {attempt.execution_id}")


async def task_cancel_requested(conn: Conn, task_id: UUID) -> bool:
    row = await (
        await conn.execute("SELECT cancel_requested FROM agent_tasks WHERE id = %s", (task_id,))
    ).fetchone()
    return bool(row and row[0])


async def append_log(
    conn: Conn,
    *,
    task_id: UUID | None,
    execution_id: UUID | None,
    log_type: str,
    message: str,
    metadata: Mapping[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO agent_task_logs (task_id, execution_id, log_type, message, metadata) "
        "VALUES (%s, %s, %s, %s, %s)",
        (task_id, execution_id, log_type, message, Jsonb(dict(metadata))),
    )


async def insert_llm_call(
    conn: Conn, *, attempt: StartedAttempt, call_index: int, call: LLMCallRecord,
    settles: int | None = None,
) -> None:
    """The call's ledger row, and the end of its budget reservation (``settles``) in the
    same statement: a budget check never counts the call twice (estimate and cost)."""
    # ON CONFLICT: a ledger row is written once per (execution, call), whatever happens.
    await conn.execute(
        """
        WITH settled AS (DELETE FROM llm_budget_reservations WHERE id = %s)
        INSERT INTO llm_calls (
            org_id, agent_id, task_id, execution_id, call_index, model, input_tokens,
            output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd,
            price_version, stop_reason, duration_ms, request_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (execution_id, call_index) DO NOTHING
        """,
        (
            settles,
            attempt.agent.org_id, attempt.agent.id, attempt.task_id, attempt.execution_id,
            call_index, call.model, call.input_tokens, call.output_tokens,
            call.cache_creation_input_tokens, call.cache_read_input_tokens, call.cost_usd,
            call.price_version, call.stop_reason, call.duration_ms, call.request_id,
        ),
    )


async def parent_outputs(conn: Conn, parent_task_ids: Sequence[UUID]) -> dict[str, Any]:
    """Outputs of completed parent tasks, keyed by their agent's name."""
    if not parent_task_ids:
        return {}
    cur = await conn.execute(
        "SELECT a.name, t.output FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
        "WHERE t.id = ANY(%s) AND t.status = 'completed'",
        (list(parent_task_ids),),
    )
    return {name: output or {} for name, output in await cur.fetchall()}
