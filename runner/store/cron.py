"""Cron as Postgres keeps it: the schedules to load, and the claim of each fire.

A fire is claimed by inserting (agent, fire time) into ``cron_fires`` and its task is
enqueued only by the caller whose insert won, in the same transaction
(``runner_cron_fire`` in sql/0005_workflows.sql). Exactly one task per fire time,
whatever the number of daemons.
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
