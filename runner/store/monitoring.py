"""Monitoring reads: the queue figures behind the Prometheus gauges, and the health probe.

They touch no queue state. The daemon refreshes the snapshot every few seconds
(``runner.metrics.refresh_task_counts``), never at scrape time; each refresh also folds
the task-count deltas into their base rows (sql/0008_retention.sql), which keeps the
counts a read of a few rows however long the history grows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Final

from runner.store import Conn, bounded


@dataclasses.dataclass(frozen=True, slots=True)
class DbSnapshot:
    """What the queue looked like at ``taken_at`` (Unix time)."""

    task_counts: Mapping[str, int]
    #: Age of the oldest pending task that is due (0 when none waits).
    oldest_pending_age_seconds: float
    #: How long the oldest current attempt of a processing task has run (0 when none).
    oldest_processing_age_seconds: float
    #: How far the most overdue processing task has run past its agent's
    #: ``timeout_seconds`` (0 when none has): the executor's timeout and the rescuer
    #: should both have ended it, so anything above a minute or two means neither did.
    processing_overdue_seconds: float
    #: ``runner_control.paused``: claiming is stopped on every daemon.
    paused: bool
    taken_at: float


# None of these reads finished history. agent_task_stats counts pending and processing
# rows on the (status, priority, created_at) index (as many as the backlog and the work
# in flight) and reads the finished counts from their maintained counters; the ages
# read the same index; runner_control is one row.
_FOLD_COUNTERS_SQL: Final = "SELECT runner_fold_counters()"
_TASK_COUNTS_SQL: Final = """
SELECT pending, processing, completed, failed, cancelled FROM agent_task_stats
"""
_TASK_COUNT_COLUMNS: Final = ("pending", "processing", "completed", "failed", "cancelled")
_QUEUE_AGES_SQL: Final = """
WITH processing AS (
    SELECT now() - coalesce(e.started_at, t.updated_at) AS age, a.timeout_seconds
    FROM agent_tasks t
    JOIN ai_agents a ON a.id = t.agent_id
    LEFT JOIN agent_executions e ON e.id = t.current_execution_id
    WHERE t.status = 'processing'
)
SELECT
    (SELECT extract(epoch FROM now() - min(scheduled_for))::float8
     FROM agent_tasks WHERE status = 'pending' AND scheduled_for <= now()),
    (SELECT extract(epoch FROM max(age))::float8 FROM processing),
    (SELECT max(extract(epoch FROM age) - timeout_seconds)::float8 FROM processing),
    (SELECT paused FROM runner_control)
"""
# A refresh must not pin a pooled connection behind a pathological scan, or wait long
# for a lock.
SNAPSHOT_STATEMENT_TIMEOUT: Final = 5.0
SNAPSHOT_LOCK_TIMEOUT: Final = 1.0


async def fetch_db_snapshot(
    conn: Conn, *, statement_timeout: float = SNAPSHOT_STATEMENT_TIMEOUT
) -> DbSnapshot:
    """Fold the count deltas, then read the queue figures: one transaction, whose every
    statement is bounded by ``statement_timeout`` seconds."""
    async with bounded(conn, statement_timeout=statement_timeout,
                       lock_timeout=SNAPSHOT_LOCK_TIMEOUT):
        await conn.execute(_FOLD_COUNTERS_SQL)
        cursor = await conn.execute(_TASK_COUNTS_SQL)
        counted = await cursor.fetchone()
        cursor = await conn.execute(_QUEUE_AGES_SQL)
        row = await cursor.fetchone()
    assert counted is not None  # the view always has exactly one row
    counts = {status: int(count) for status, count in zip(_TASK_COUNT_COLUMNS, counted,
                                                          strict=True)}
    assert row is not None  # a SELECT without FROM returns exactly one row
    pending_age, processing_age, overdue, paused = row
    return DbSnapshot(
        task_counts=counts,
        oldest_pending_age_seconds=max(0.0, pending_age or 0.0),
        oldest_processing_age_seconds=max(0.0, processing_age or 0.0),
        processing_overdue_seconds=max(0.0, overdue or 0.0),
        paused=bool(paused),
        taken_at=time.time(),
    )


async def ping(conn: Conn) -> None:
    """The health probe: the connection answers a trivial query."""
    await conn.execute("SELECT 1")
