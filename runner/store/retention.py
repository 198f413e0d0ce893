"""Retention: the deletes of finished history past its horizon, in bounded batches.

Every batch is one statement in its own short transaction (:func:`runner.store.bounded`
sets its statement and lock timeouts). What a batch may touch (sql/0008_retention.sql):

* **tasks** of one finished status whose ``completed_at`` is before the cutoff, oldest
  first through ``agent_tasks_finished_idx``, locked ``FOR UPDATE SKIP LOCKED`` (a row
  someone else holds, a retry for instance, waits for the next pass). Never a pending or
  processing task: the status is part of the index condition. Never a task of a workflow
  run that is still running, or that changed since the cutoff (a retry in it may still
  need its completed steps). With each task go its executions, its log lines, and the
  procrastinate jobs of its attempts (``agent_tasks.job_id`` and every
  ``agent_executions.job_id``) with their events, unless a job is still ``todo`` or
  ``doing``. Rows elsewhere that only name the task or an execution (``llm_calls``,
  ``stream_insights``, ``cron_fires``, ``workflow_run_steps``) keep existing, their link
  set to NULL by their foreign keys: business data is never deleted.
* **workflow runs** that finished before the cutoff and have no task left, except the
  latest run of each stream (what a stream's "last run" shows).
* **procrastinate jobs nobody names** (a job whose claim was skipped, the job of a task
  cancelled before it ran, a job replaced by the reconciler): finished jobs deferred
  before the cutoff that no task and no execution references. They are found by a scan
  in id order (ids grow with time) that resumes where the last one stopped
  (``runner_prune_state.jobs_checked_through``), so each job is looked at once.
* **the LLM ledger**: ``llm_calls`` rows created before the ledger cutoff.

Lock order is the finish path's (task, then execution, then job), so a prune batch
cannot deadlock with an attempt; pending and processing tasks are never locked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Final

from runner.store import Conn, bounded

#: Session-level advisory lock: one pruner at a time across every daemon and the CLI.
PRUNE_LOCK_KEY: Final = 0x41525052554E4531  # "ARPRUNE1"

#: How long one batch statement may run, and wait for a row lock, before it gives up
#: (the pass ends; the next one resumes where it stopped).
BATCH_STATEMENT_TIMEOUT: Final = 120.0
BATCH_LOCK_TIMEOUT: Final = 5.0

# The task id a job of ours carries, as a uuid (NULL when it carries none).
_JOB_TASK_ID = """
CASE WHEN j.args ->> 'task_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
     THEN (j.args ->> 'task_id')::uuid END
"""

# A finished task that may go: past the cutoff, and not part of a workflow run that is
# running or changed since the cutoff.
_EXPIRED_TASK = """
t.status = %(status)s AND t.completed_at < %(cutoff)s
AND (t.workflow_run_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM workflow_runs r
        WHERE r.id = t.workflow_run_id
          AND (r.status = 'running' OR r.updated_at >= %(cutoff)s)))
"""

# One batch of tasks and everything that goes with them. The ids travel as arrays so
# that every delete is an index lookup (a join against the CTE would be planned as a
# scan of the whole table). The tasks themselves are deleted by their row address: they
# are locked by this statement, so it cannot change, and a primary-key lookup per task
# (a random page of a large index) is saved. Events are deleted by their foreign key's
# cascade from the jobs; they are counted first (no one adds events to a finished job).
_DELETE_TASKS = f"""
WITH doomed AS MATERIALIZED (
    SELECT t.ctid AS row_address, t.id, t.job_id, t.completed_at
    FROM agent_tasks t
    WHERE {_EXPIRED_TASK}
    ORDER BY t.completed_at
    LIMIT %(limit)s
    FOR UPDATE OF t SKIP LOCKED
), batch AS (
    SELECT array_agg(id) AS task_ids, array_agg(row_address) AS row_addresses,
           array_agg(job_id) FILTER (WHERE job_id IS NOT NULL) AS job_ids
    FROM doomed
), executions AS (
    DELETE FROM agent_executions e WHERE e.task_id = ANY ((SELECT task_ids FROM batch)::uuid[])
    RETURNING e.job_id
), logs AS (
    DELETE FROM agent_task_logs l WHERE l.task_id = ANY ((SELECT task_ids FROM batch)::uuid[])
    RETURNING 1
), tasks AS (
    DELETE FROM agent_tasks t WHERE t.ctid = ANY ((SELECT row_addresses FROM batch)::tid[])
    RETURNING 1
), job_ids AS (
    SELECT array_agg(DISTINCT id) AS ids FROM (
        SELECT unnest(job_ids) FROM batch
        UNION ALL
        SELECT job_id FROM executions WHERE job_id IS NOT NULL) AS j(id)
), events AS (
    SELECT count(*) AS n FROM procrastinate_events ev JOIN procrastinate_jobs j ON j.id = ev.job_id
    WHERE ev.job_id = ANY ((SELECT ids FROM job_ids)::bigint[])
      AND j.status NOT IN ('todo', 'doing')
), jobs AS (
    DELETE FROM procrastinate_jobs j WHERE j.id = ANY ((SELECT ids FROM job_ids)::bigint[])
      AND j.status NOT IN ('todo', 'doing')
    RETURNING 1
)
SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM executions),
       (SELECT count(*) FROM logs), (SELECT count(*) FROM jobs), (SELECT n FROM events)
"""

# What the same batches would delete, all at once (``--dry-run``).
_COUNT_TASKS = f"""
WITH doomed AS MATERIALIZED (
    SELECT t.id, t.job_id FROM agent_tasks t WHERE {_EXPIRED_TASK}
), executions AS MATERIALIZED (
    SELECT e.job_id FROM agent_executions e WHERE e.task_id IN (SELECT id FROM doomed)
), jobs AS MATERIALIZED (
    SELECT j.id FROM procrastinate_jobs j
    WHERE j.id IN (SELECT job_id FROM doomed UNION SELECT job_id FROM executions)
      AND j.status NOT IN ('todo', 'doing')
)
SELECT (SELECT count(*) FROM doomed), (SELECT count(*) FROM executions),
       (SELECT count(*) FROM agent_task_logs l WHERE l.task_id IN (SELECT id FROM doomed)),
       (SELECT count(*) FROM jobs),
       (SELECT count(*) FROM procrastinate_events ev WHERE ev.job_id IN (SELECT id FROM jobs))
"""

# Finished runs with nothing left in agent_tasks, except each stream's latest run.
_EXPIRED_RUN = """
r.status = %(status)s AND r.completed_at < %(cutoff)s
AND NOT EXISTS (SELECT 1 FROM agent_tasks t WHERE t.workflow_run_id = r.id)
AND EXISTS (SELECT 1 FROM workflow_runs later
            WHERE later.stream_id = r.stream_id AND later.created_at > r.created_at)
"""

_DELETE_RUNS = f"""
WITH doomed AS MATERIALIZED (
    SELECT r.id FROM workflow_runs r
    WHERE {_EXPIRED_RUN}
    ORDER BY r.completed_at
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
), steps AS (
    DELETE FROM workflow_run_steps s WHERE s.workflow_run_id IN (SELECT id FROM doomed)
    RETURNING 1
), runs AS (
    DELETE FROM workflow_runs r WHERE r.id IN (SELECT id FROM doomed)
    RETURNING 1
)
SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM steps)
"""

_COUNT_RUNS = f"""
WITH doomed AS MATERIALIZED (SELECT r.id FROM workflow_runs r WHERE {_EXPIRED_RUN})
SELECT (SELECT count(*) FROM doomed),
       (SELECT count(*) FROM workflow_run_steps s
        WHERE s.workflow_run_id IN (SELECT id FROM doomed))
"""

# Jobs after ``after`` in id order, up to ``limit`` of them: the last id that was
# deferred before the cutoff (``through``: the scan stops at the first younger job), and
# which of the jobs up to it are finished and referenced by no task and no execution.
_ORPHAN_SCAN = f"""
WITH scanned AS MATERIALIZED (
    SELECT j.id, j.status, {_JOB_TASK_ID} AS task_id,
           (SELECT min(ev.at) FROM procrastinate_events ev WHERE ev.job_id = j.id) AS deferred_at
    FROM procrastinate_jobs j
    WHERE j.id > %(after)s
    ORDER BY j.id
    LIMIT %(limit)s
), horizon AS (
    SELECT count(*) AS scanned,
           coalesce(min(id) FILTER (WHERE deferred_at >= %(cutoff)s) - 1, max(id)) AS through,
           bool_or(deferred_at >= %(cutoff)s) AS reached_cutoff
    FROM scanned
), orphans AS MATERIALIZED (
    SELECT s.id FROM scanned s, horizon h
    WHERE s.id <= h.through AND s.status NOT IN ('todo', 'doing')
      AND NOT EXISTS (SELECT 1 FROM agent_tasks t WHERE t.job_id = s.id)
      AND NOT EXISTS (SELECT 1 FROM agent_executions e
                      WHERE e.task_id = s.task_id AND e.job_id = s.id)
)
"""

_COUNT_ORPHANS = _ORPHAN_SCAN + """
SELECT h.scanned, h.through, coalesce(h.reached_cutoff, false),
       (SELECT count(*) FROM orphans),
       (SELECT count(*) FROM procrastinate_events ev WHERE ev.job_id IN (SELECT id FROM orphans))
FROM horizon h
"""

_DELETE_ORPHANS = _ORPHAN_SCAN + """
, events AS (
    SELECT count(*) AS n FROM procrastinate_events ev WHERE ev.job_id IN (SELECT id FROM orphans)
), jobs AS (
    DELETE FROM procrastinate_jobs j WHERE j.id IN (SELECT id FROM orphans)
      AND j.status NOT IN ('todo', 'doing')
    RETURNING 1
), moved AS (
    UPDATE runner_prune_state
    SET jobs_checked_through = greatest(jobs_checked_through, (SELECT through FROM horizon))
    WHERE (SELECT through FROM horizon) IS NOT NULL
)
SELECT h.scanned, h.through, coalesce(h.reached_cutoff, false),
       (SELECT count(*) FROM jobs), (SELECT n FROM events)
FROM horizon h
"""

_DELETE_LEDGER = """
DELETE FROM llm_calls WHERE id IN (
    SELECT id FROM llm_calls WHERE created_at < %(cutoff)s
    ORDER BY created_at LIMIT %(limit)s)
"""

_COUNT_LEDGER = "SELECT count(*) FROM llm_calls WHERE created_at < %(cutoff)s"

#: Webhook events older than the cutoff with no delivery still open (pending, or being
#: attempted), with all their delivery attempts. Oldest first, skipping rows another
#: transaction holds (an attempt being recorded).
_WEBHOOK_EVENTS_DUE = """
    SELECT e.id FROM webhook_events e
    WHERE e.created_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                      WHERE d.event_id = e.id AND d.status IN ('pending', 'delivering'))
    ORDER BY e.created_at
"""

_DELETE_WEBHOOK_EVENTS = f"""
WITH doomed AS (
    {_WEBHOOK_EVENTS_DUE}
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
), deliveries AS (
    DELETE FROM webhook_deliveries d USING doomed WHERE d.event_id = doomed.id
    RETURNING 1
), events AS (
    DELETE FROM webhook_events e USING doomed WHERE e.id = doomed.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries)
"""

_COUNT_WEBHOOK_EVENTS = f"""
WITH due AS ({_WEBHOOK_EVENTS_DUE})
SELECT (SELECT count(*) FROM due),
       (SELECT count(*) FROM webhook_deliveries d JOIN due ON d.event_id = due.id)
"""


# -- batches -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TaskBatch:
    tasks: int
    executions: int
    logs: int
    jobs: int
    events: int


@dataclasses.dataclass(frozen=True, slots=True)
class RunBatch:
    runs: int
    steps: int


@dataclasses.dataclass(frozen=True, slots=True)
class OrphanBatch:
    #: jobs looked at (fewer than the limit: the scan reached the newest job)
    scanned: int
    #: the last job id looked at that was deferred before the cutoff (None: none)
    through: int | None
    #: a job deferred after the cutoff was met: nothing further is old enough
    reached_cutoff: bool
    jobs: int
    events: int


async def now(conn: Conn) -> dt.datetime:
    """The database's clock: every cutoff of one prune is computed from one reading."""
    row = await (await conn.execute("SELECT now()")).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def try_lock(conn: Conn) -> bool:
    """Take the prune lock for this session; False when another session holds it."""
    row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK_KEY,))
                 ).fetchone()
    return bool(row and row[0])


async def unlock(conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))


async def _one_row(conn: Conn, sql: str, params: dict[str, object]) -> tuple[int, ...]:
    async with bounded(conn, statement_timeout=BATCH_STATEMENT_TIMEOUT,
                       lock_timeout=BATCH_LOCK_TIMEOUT):
        row = await (await conn.execute(sql, params)).fetchone()
    assert row is not None
    return tuple(row)


async def delete_tasks(conn: Conn, *, status: str, cutoff: dt.datetime, limit: int) -> TaskBatch:
    """Delete up to ``limit`` of the oldest expired tasks of ``status`` (one transaction)."""
    row = await _one_row(conn, _DELETE_TASKS, {"status": status, "cutoff": cutoff,
                                               "limit": limit})
    return TaskBatch(*(int(value or 0) for value in row))


async def count_tasks(conn: Conn, *, status: str, cutoff: dt.datetime) -> TaskBatch:
    row = await _one_row(conn, _COUNT_TASKS, {"status": status, "cutoff": cutoff})
    return TaskBatch(*(int(value or 0) for value in row))


async def delete_runs(conn: Conn, *, status: str, cutoff: dt.datetime, limit: int) -> RunBatch:
    row = await _one_row(conn, _DELETE_RUNS, {"status": status, "cutoff": cutoff,
                                              "limit": limit})
    return RunBatch(*(int(value or 0) for value in row))


async def count_runs(conn: Conn, *, status: str, cutoff: dt.datetime) -> RunBatch:
    row = await _one_row(conn, _COUNT_RUNS, {"status": status, "cutoff": cutoff})
    return RunBatch(*(int(value or 0) for value in row))


async def orphan_scan_start(conn: Conn) -> int:
    """Where the scan for unreferenced jobs resumes (the last job id already judged)."""
    row = await (await conn.execute("SELECT jobs_checked_through FROM runner_prune_state")
                 ).fetchone()
    return int(row[0]) if row else 0


def _orphan_batch(row: tuple[int, ...]) -> OrphanBatch:
    scanned, through, reached, jobs, events = row
    return OrphanBatch(scanned=int(scanned), through=None if through is None else int(through),
                       reached_cutoff=bool(reached), jobs=int(jobs or 0),
                       events=int(events or 0))


async def delete_orphan_jobs(
    conn: Conn, *, after: int, cutoff: dt.datetime, limit: int
) -> OrphanBatch:
    """Judge up to ``limit`` jobs after ``after``; delete the unreferenced finished ones
    deferred before ``cutoff`` and move the scan's start past them."""
    row = await _one_row(conn, _DELETE_ORPHANS, {"after": after, "cutoff": cutoff,
                                                 "limit": limit})
    return _orphan_batch(row)


async def count_orphan_jobs(
    conn: Conn, *, after: int, cutoff: dt.datetime, limit: int
) -> OrphanBatch:
    row = await _one_row(conn, _COUNT_ORPHANS, {"after": after, "cutoff": cutoff,
                                                "limit": limit})
    return _orphan_batch(row)


async def delete_ledger(conn: Conn, *, cutoff: dt.datetime, limit: int) -> int:
    async with bounded(conn, statement_timeout=BATCH_STATEMENT_TIMEOUT,
                       lock_timeout=BATCH_LOCK_TIMEOUT):
        cur = await conn.execute(_DELETE_LEDGER, {"cutoff": cutoff, "limit": limit})
    return cur.rowcount


async def count_ledger(conn: Conn, *, cutoff: dt.datetime) -> int:
    row = await _one_row(conn, _COUNT_LEDGER, {"cutoff": cutoff})
    return int(row[0])


async def delete_webhook_events(
    conn: Conn, *, cutoff: dt.datetime, limit: int
) -> tuple[int, int]:
    """(events, deliveries) deleted: one batch of :data:`_WEBHOOK_EVENTS_DUE`."""
    row = await _one_row(conn, _DELETE_WEBHOOK_EVENTS, {"cutoff": cutoff, "limit": limit})
    return int(row[0]), int(row[1])


async def count_webhook_events(conn: Conn, *, cutoff: dt.datetime) -> tuple[int, int]:
    row = await _one_row(conn, _COUNT_WEBHOOK_EVENTS, {"cutoff": cutoff})
    return int(row[0]), int(row[1])


async def finish(conn: Conn) -> None:
    """Fold the count deltas the deletes left (sql/0008_retention.sql) and note the time."""
    await conn.execute("SELECT runner_fold_counters()")
    await conn.execute("UPDATE runner_prune_state SET last_pruned_at = now()")
