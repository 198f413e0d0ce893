"""Monitoring reads: the queue figures behind the Prometheus gauges, and the health probe.

Read-only; they touch no queue state. The daemon refreshes the snapshot every few
seconds (``runner.metrics.refresh_task_counts``), never at scrape time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Final

from runner.store import Conn


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


# Both queries run on indexes: the
# (status, priority, created_at) index for the counts and the processing rows (few:
# bounded by the daemons' concurrency), a primary-key read for runner_control. The
# pending scan is proportional to the backlog, as is the count itself.
_TASK_COUNTS_SQL: Final = "SELECT status, count(*) FROM agent_tasks GROUP BY status"
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
# A refresh must not pin a pooled connection behind a pathological scan.
_SNAPSHOT_STATEMENT_TIMEOUT_MS: Final = 5000


async def fetch_db_snapshot(conn: Conn) -> DbSnapshot:
    """Read the queue figures (in the connection's current transaction)."""
    await conn.execute(
        "SELECT set_config('statement_timeout', %s, true)", (str(_SNAPSHOT_STATEMENT_TIMEOUT_MS),)
    )
    cursor = await conn.execute(_TASK_COUNTS_SQL)
    counts = {str(status): int(count) for status, count in await cursor.fetchall()}
    cursor = await conn.execute(_QUEUE_AGES_SQL)
    row = await cursor.fetchone()
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
