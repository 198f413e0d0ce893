"""Async readers of workflow runs, used by the tests only (the CLI reads runs through
``runner.store.operator``, with the same query texts)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from runner.store import Conn
from runner.store.workflows import RUN, TREE

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





async def workflow_run(conn: Conn, run_id: UUID) -> WorkflowRun | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(RUN, (run_id,))
        row = await cur.fetchone()
    return WorkflowRun(**row) if row else None





async def workflow_run_tree(conn: Conn, run_id: UUID) -> list[WorkflowStep]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(TREE, (run_id,))
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
