"""Daemons: registration, heartbeats, the pause switch, the rescue of attempts whose
daemon died or no longer runs them, and the reconciler of pending tasks left without a
delivery job (sql/0007_nothing_stranded.sql)."""

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


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    #: False when our row is gone (another daemon declared us dead)
    registered: bool
    #: running tasks of ours whose cancel was requested (the fallback to the abort
    #: notification, which a restarted delivery worker no longer relays)
    cancel_requested: list[UUID]


_HEARTBEAT = """
WITH beat AS (
    UPDATE runner_daemons
    SET last_heartbeat = now(), in_flight = %(in_flight)s, stopping = %(stopping)s,
        running_task_ids = %(running)s
    WHERE id = %(daemon_id)s
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM beat),
       ARRAY(SELECT t.id FROM agent_tasks t
             WHERE t.id = ANY(%(running)s) AND t.cancel_requested AND t.status = 'processing')
"""


async def heartbeat(
    conn: Conn, *, daemon_id: UUID, running: list[UUID], stopping: bool
) -> Heartbeat:
    """Prove this daemon alive, naming the tasks it runs (the rescuer leaves those
    alone); one round trip."""
    cur = await conn.execute(_HEARTBEAT, {
        "daemon_id": daemon_id, "in_flight": len(running), "stopping": stopping,
        "running": running,
    })
    row = await cur.fetchone()
    assert row is not None
    return Heartbeat(registered=bool(row[0]), cancel_requested=list(row[1]))


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
    #: requeued | failed (no retries left) | cancelled (its cancel was requested)
    outcome: str

    @property
    def requeued(self) -> bool:
        return self.outcome == "requeued"


async def rescue_orphans(conn: Conn, *, min_age_seconds: float) -> list[Rescued]:
    """Re-queue attempts whose daemon died or no longer runs them (a rescued attempt
    spends a retry: a task that kills its daemon every time must not loop forever);
    see ``runner_rescue_orphans`` in sql/0007_nothing_stranded.sql."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT task_id, execution_id, agent_type, outcome FROM runner_rescue_orphans(%s)",
            (min_age_seconds,))
        rows = await cur.fetchall()
        # Dead daemons' rows are kept until their attempts are rescued, so the
        # check above can see who they were; after that they only clutter status.
        await conn.execute(
            "DELETE FROM runner_daemons d WHERE d.last_heartbeat < now() - d.dead_after * 4"
        )
    return [Rescued(*row) for row in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class Redelivered:
    task_id: UUID
    #: what its job was: missing | failed | succeeded | aborted | cancelled | doing
    previous_job_status: str


async def reconcile_pending(conn: Conn, *, stalled_after_seconds: float) -> list[Redelivered]:
    """Give a fresh delivery job to every pending task that has none it could run
    (see ``runner_reconcile_pending``)."""
    cur = await conn.execute(
        "SELECT task_id, previous_job_status FROM runner_reconcile_pending(%s)",
        (stalled_after_seconds,))
    return [Redelivered(*row) for row in await cur.fetchall()]
