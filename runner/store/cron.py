"""Cron as Postgres keeps it: the schedules to load, and the claim of each fire.

An agent's fire is claimed by inserting (agent, fire time) into ``cron_fires`` and its
task is enqueued only by the caller whose insert won, in the same transaction
(``runner_cron_fire`` in sql/0005_workflows.sql). A stream's fire is claimed in
``stream_cron_fires`` (stream, fire time) and starts one run of the stream's workflow
(``runner_stream_cron_fire`` in sql/0009_pipelines.sql). Exactly one task, or one run,
per fire time, whatever the number of daemons.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from uuid import UUID

from psycopg.rows import dict_row

from runner.store import Conn


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
class StreamScheduleRow:
    """A stream with a schedule: each fire starts a run of its workflow."""

    stream_id: UUID
    name: str
    schedule_cron: str
    schedule_timezone: str
    #: when the current expression / time zone took effect
    schedule_changed_at: dt.datetime
    #: the latest fire any daemon recorded for the stream (started, skipped or failed)
    last_fire_time: dt.datetime | None


_LOAD_STREAM_SCHEDULES = """
SELECT s.id AS stream_id, s.name, s.schedule_cron, s.schedule_timezone, s.schedule_changed_at,
       (SELECT max(f.fire_time) FROM stream_cron_fires f WHERE f.stream_id = s.id)
           AS last_fire_time
FROM streams s
WHERE s.schedule_cron IS NOT NULL
ORDER BY s.id
"""


async def load_stream_schedules(conn: Conn) -> list[StreamScheduleRow]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_LOAD_STREAM_SCHEDULES)
        rows = await cur.fetchall()
    return [StreamScheduleRow(**row) for row in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class FireResult:
    #: an agent's fire: enqueued | duplicate (another daemon won) | stale (schedule
    #: changed) | gone; a stream's: started | skipped (its previous scheduled run is
    #: still going) | failed (no run could start) | duplicate | stale | gone
    outcome: str
    task_id: UUID | None
    agent_type: str | None
    #: a stream's fire: the run it started, or the run still going that it skipped for
    workflow_run_id: UUID | None = None
    #: a stream's fire: why it was skipped or failed
    note: str | None = None


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


async def record_stream_fire(
    conn: Conn,
    *,
    stream_id: UUID,
    fire_time: dt.datetime,
    schedule_cron: str,
    schedule_timezone: str,
    daemon_id: UUID | None,
) -> FireResult:
    """Claim a stream's fire and start its run in one transaction; only one caller per
    (stream, fire time) ever gets ``started``, ``skipped`` or ``failed``."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT outcome, workflow_run_id, note "
            "FROM runner_stream_cron_fire(%s, %s, %s, %s, %s)",
            (stream_id, fire_time, schedule_cron, schedule_timezone, daemon_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return FireResult(outcome=row[0], task_id=None, agent_type=None, workflow_run_id=row[1],
                      note=row[2])


# The latest fire of each agent is kept whatever its age: it is the baseline that tells
# the scheduler whether a fire was missed while no daemon ran.
_PRUNE_FIRES = """
DELETE FROM cron_fires f
WHERE f.fire_time < now() - make_interval(secs => %s)
  AND EXISTS (SELECT 1 FROM cron_fires g
              WHERE g.agent_id = f.agent_id AND g.fire_time > f.fire_time)
"""


_PRUNE_STREAM_FIRES = """
DELETE FROM stream_cron_fires f
WHERE f.fire_time < now() - make_interval(secs => %s)
  AND EXISTS (SELECT 1 FROM stream_cron_fires g
              WHERE g.stream_id = f.stream_id AND g.fire_time > f.fire_time)
"""


async def prune_cron_fires(conn: Conn, *, older_than: dt.timedelta) -> int:
    """Agents' and streams' fires older than ``older_than``, but each one's latest."""
    cur = await conn.execute(_PRUNE_FIRES, (older_than.total_seconds(),))
    pruned = cur.rowcount
    cur = await conn.execute(_PRUNE_STREAM_FIRES, (older_than.total_seconds(),))
    return pruned + cur.rowcount
