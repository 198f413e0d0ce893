"""Daemons: registration, heartbeats, the pause switch, and the rescue of attempts
whose daemon died (or whose delivery job ended without our finish)."""

from __future__ import annotations

import dataclasses
from uuid import UUID

from runner.store import Conn


async def register_daemon(
    conn: Conn,
    *,
    daemon_id: UUID,
    host: str,
    pid: int,
    version: str,
    concurrency: int,
    poll_interval: float,
    dead_after: float,
) -> None:
    await conn.execute(
        "INSERT INTO runner_daemons (id, host, pid, version, concurrency, poll_interval_seconds, "
        "dead_after) VALUES (%s, %s, %s, %s, %s, %s, make_interval(secs => %s))",
        (daemon_id, host, pid, version, concurrency, poll_interval, dead_after),
    )


async def heartbeat(conn: Conn, *, daemon_id: UUID, in_flight: int, stopping: bool) -> bool:
    """Returns False when our row is gone (another daemon declared us dead)."""
    cur = await conn.execute(
        "UPDATE runner_daemons SET last_heartbeat = now(), in_flight = %s, stopping = %s "
        "WHERE id = %s",
        (in_flight, stopping, daemon_id),
    )
    return cur.rowcount == 1


async def claiming_paused(conn: Conn) -> bool:
    row = await (await conn.execute("SELECT paused FROM runner_control")).fetchone()
    return bool(row and row[0])


async def unregister_daemon(conn: Conn, daemon_id: UUID) -> None:
    await conn.execute("DELETE FROM runner_daemons WHERE id = %s", (daemon_id,))


@dataclasses.dataclass(frozen=True, slots=True)
class Rescued:
    task_id: UUID
    execution_id: UUID
    agent_type: str
    requeued: bool


# An attempt is orphaned when its daemon stopped heartbeating (crash, kill -9, lost
# network), or when its procrastinate job is no longer 'doing' (the worker gave up on
# it without our finish). Each orphan is re-queued with a fresh job, spending one retry:
# a task that kills its daemon every time must not loop forever.
_RESCUE = """
WITH orphan AS (
    SELECT e.id AS execution_id, e.task_id, e.job_id
    FROM agent_executions e
    LEFT JOIN runner_daemons d ON d.id = e.daemon_id
    LEFT JOIN procrastinate_jobs j ON j.id = e.job_id
    WHERE e.status = 'running'
      AND e.started_at < now() - make_interval(secs => %(min_age)s)
      AND (d.id IS NULL
           OR d.last_heartbeat < now() - d.dead_after
           OR j.id IS NULL
           OR j.status <> 'doing')
    ORDER BY e.started_at
    LIMIT 500
), task AS (
    SELECT t.id, t.retry_count, t.max_retries, t.priority, o.execution_id, o.job_id
    FROM agent_tasks t JOIN orphan o ON o.task_id = t.id
    WHERE t.status = 'processing' AND t.current_execution_id = o.execution_id
    FOR UPDATE OF t SKIP LOCKED
), old_job AS (
    UPDATE procrastinate_jobs j SET status = 'failed'
    FROM task WHERE j.id = task.job_id AND j.status IN ('doing', 'todo')
), lost AS (
    UPDATE agent_executions e
    SET status = 'rescued', completed_at = clock_timestamp(),
        duration_ms = runner_elapsed_ms(e.started_at),
        error_message = 'attempt lost: its daemon stopped heartbeating or its job ended; re-queued'
    FROM task WHERE e.id = task.execution_id AND e.status = 'running'
), requeued AS (
    UPDATE agent_tasks t
    SET retry_count = t.retry_count + 1,
        status = CASE WHEN t.retry_count < t.max_retries THEN 'pending' ELSE 'failed' END,
        error_message = 'attempt lost: its daemon stopped heartbeating or its job ended',
        completed_at = CASE WHEN t.retry_count < t.max_retries THEN NULL ELSE now() END,
        current_execution_id = NULL,
        job_id = CASE WHEN t.retry_count < t.max_retries
                      THEN runner_defer_attempt(t.id, t.priority, now()) ELSE NULL END,
        updated_at = now()
    FROM task WHERE t.id = task.id
    RETURNING t.id, t.status
)
SELECT requeued.id, task.execution_id, a.agent_type, requeued.status = 'pending'
FROM requeued
JOIN task ON task.id = requeued.id
JOIN agent_tasks t2 ON t2.id = requeued.id
JOIN ai_agents a ON a.id = t2.agent_id
"""


async def rescue_orphans(conn: Conn, *, min_age_seconds: float) -> list[Rescued]:
    async with conn.transaction():
        cur = await conn.execute(_RESCUE, {"min_age": min_age_seconds})
        rows = await cur.fetchall()
        # Dead daemons' rows are kept until their attempts are rescued, so the
        # check above can see who they were; after that they only clutter status.
        await conn.execute(
            "DELETE FROM runner_daemons d WHERE d.last_heartbeat < now() - d.dead_after * 4"
        )
    return [Rescued(row[0], row[1], row[2], row[3]) for row in rows]


