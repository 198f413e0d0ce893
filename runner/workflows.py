"""Workflow runs and cron fires as Postgres keeps them: every query of this feature.

The rules live in SQL (sql/0005_workflows.sql): a run's next steps are enqueued by a
trigger in the transaction that completes their last parent, and a cron fire is
claimed in ``cron_fires`` before its task is enqueued. This module only calls those
functions and reads the results, for the scheduler (``runner.scheduler``), the CLI and
the tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from runner.store import Conn

#: Channel on which every change of an agent's schedule is announced (payload: agent id).
SCHEDULES_CHANNEL = "agent_runner_schedules"
#: Channel on which a run's status changes are announced (JSON: workflow_run_id, status).
WORKFLOWS_CHANNEL = "agent_runner_workflows"


# -- workflow runs -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WorkflowRun:
    id: UUID
    stream_id: UUID
    trigger: str
    status: str  # running | completed | failed
    priority: int
    error_message: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class WorkflowStep:
    """One row of ``workflow_run_tree``."""

    agent_id: UUID
    agent_name: str
    depth: int | None
    execution_order: int
    #: waiting | not_started, or the task's status once it is enqueued
    status: str
    task_id: UUID | None
    trigger: str | None
    parent_task_ids: tuple[UUID, ...]
    parent_agents: tuple[str, ...]
    #: why a step did not start, or the task's error
    note: str | None


async def trigger_stream_workflow(
    conn: Conn, stream_id: UUID, *, trigger: str = "manual", priority: int = 5
) -> UUID:
    """Start one run of the stream's workflow (its root tasks are enqueued in the
    caller's transaction). Bad input raises the database's error, naming the problem."""
    cur = await conn.execute(
        "SELECT trigger_stream_workflow(%s, %s, %s)", (stream_id, trigger, priority)
    )
    row = await cur.fetchone()
    assert row is not None
    return UUID(str(row[0]))


_RUN = """
SELECT id, stream_id, trigger, status, priority, error_message, created_at, completed_at
FROM workflow_runs WHERE id = %s
"""


async def workflow_run(conn: Conn, run_id: UUID) -> WorkflowRun | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_RUN, (run_id,))
        row = await cur.fetchone()
    return WorkflowRun(**row) if row else None


_TREE = """
SELECT agent_id, agent_name, depth, execution_order, status, task_id, trigger,
       parent_task_ids, parent_agents, note
FROM workflow_run_tree
WHERE workflow_run_id = %s
ORDER BY depth NULLS LAST, execution_order, agent_name
"""


async def workflow_run_tree(conn: Conn, run_id: UUID) -> list[WorkflowStep]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_TREE, (run_id,))
        rows = await cur.fetchall()
    return [_step(row) for row in rows]


def _step(row: dict[str, Any]) -> WorkflowStep:
    return WorkflowStep(
        agent_id=row["agent_id"],
        agent_name=row["agent_name"],
        depth=row["depth"],
        execution_order=row["execution_order"],
        status=row["status"],
        task_id=row["task_id"],
        trigger=row["trigger"],
        parent_task_ids=tuple(row["parent_task_ids"]),
        parent_agents=tuple(row["parent_agents"]),
        note=row["note"],
    )


# -- cron ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleRow:
    """An active agent with a schedule, as the scheduler loads it."""

    agent_id: UUID
    name: str
    agent_type: str
    schedule_cron: str
    schedule_timezone: str
    #: when the current expression / time zone / active flag took effect
    schedule_changed_at: dt.datetime
    #: the latest fire any daemon recorded for the agent
    last_fire_time: dt.datetime | None


_LOAD_SCHEDULES = """
SELECT a.id AS agent_id, a.name, a.agent_type, a.schedule_cron, a.schedule_timezone,
       a.schedule_changed_at,
       (SELECT max(f.fire_time) FROM cron_fires f WHERE f.agent_id = a.id) AS last_fire_time
FROM ai_agents a
WHERE a.is_active AND a.schedule_cron IS NOT NULL
ORDER BY a.id
"""


async def load_schedules(conn: Conn) -> list[ScheduleRow]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_LOAD_SCHEDULES)
        rows = await cur.fetchall()
    return [ScheduleRow(**row) for row in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class FireResult:
    #: enqueued | duplicate (another daemon won) | stale (schedule changed) | gone
    outcome: str
    task_id: UUID | None
    agent_type: str | None


async def record_cron_fire(
    conn: Conn,
    *,
    agent_id: UUID,
    fire_time: dt.datetime,
    schedule_cron: str,
    schedule_timezone: str,
    daemon_id: UUID | None,
) -> FireResult:
    """Claim the fire and enqueue its task in one transaction; only one caller per
    (agent, fire time) ever gets ``enqueued``."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT outcome, task_id, agent_type FROM runner_cron_fire(%s, %s, %s, %s, %s)",
            (agent_id, fire_time, schedule_cron, schedule_timezone, daemon_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return FireResult(outcome=row[0], task_id=row[1], agent_type=row[2])


# The latest fire of each agent is kept whatever its age: it is the baseline that tells
# the scheduler whether a fire was missed while no daemon ran.
_PRUNE_FIRES = """
DELETE FROM cron_fires f
WHERE f.fire_time < now() - make_interval(secs => %s)
  AND EXISTS (SELECT 1 FROM cron_fires g
              WHERE g.agent_id = f.agent_id AND g.fire_time > f.fire_time)
"""


async def prune_cron_fires(conn: Conn, *, older_than: dt.timedelta) -> int:
    cur = await conn.execute(_PRUNE_FIRES, (older_than.total_seconds(),))
    return cur.rowcount
