"""Retention: finished history past its horizon is pruned (CONTRACT.md, "Retention").

``agent-runner prune`` runs :func:`prune_database`; every daemon runs :func:`prune_once`
every ``RUNNER_PRUNE_INTERVAL`` seconds. Both hold a session-level advisory lock for the
whole pass, so one pruner works at a time across every daemon and operator; the others
skip their turn. The deletes are bounded batches in short transactions
(:mod:`runner.store.retention` says what each may touch); a batch that times out ends
the pass early, and the next pass resumes where it stopped.

A horizon of 0 days keeps that history forever.

``agent-runner prune --workers N`` deletes tasks on N connections at once (batches never
overlap: each takes its rows ``FOR UPDATE SKIP LOCKED``), to catch up on a large backlog
faster at the price of N busy database backends; the daemons' pass uses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.settings import Settings
from runner.store import Conn
from runner.store import retention as store

__all__ = [
    "PRUNED_TABLES",
    "PruneReport",
    "RetentionPolicy",
    "prune",
    "prune_database",
    "prune_once",
]

logger = logging.getLogger("runner.retention")

#: Tasks per batch (one transaction); the other tables' batches are as many rows.
DEFAULT_BATCH_SIZE: Final = 5000

#: The tables a prune reports on, in the order it reports them.
PRUNED_TABLES: Final = metrics.PRUNED_TABLES
#: The finished statuses, each with its horizon.
_TASK_STATUSES: Final = ("completed", "cancelled", "failed")


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How many days each kind of history is kept (0: forever)."""

    retention_days: float = 30.0
    failed_retention_days: float = 90.0
    ledger_retention_days: float = 0.0
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            retention_days=settings.retention_days,
            failed_retention_days=settings.failed_retention_days,
            ledger_retention_days=settings.ledger_retention_days,
        )

    def days_for(self, status: str) -> float:
        """The horizon of tasks (and workflow runs) ending in ``status``."""
        return self.failed_retention_days if status == "failed" else self.retention_days

    @property
    def job_days(self) -> float:
        """Unreferenced delivery jobs go after the shortest task horizon (0: never)."""
        kept = [days for days in (self.retention_days, self.failed_retention_days) if days]
        return min(kept) if kept else 0.0


def _cutoff(now: dt.datetime, days: float) -> dt.datetime | None:
    return now - dt.timedelta(days=days) if days > 0 else None


@dataclasses.dataclass(slots=True)
class PruneReport:
    """What one pass removed (or, ``dry_run``, would remove), per table."""

    dry_run: bool
    #: False when another session held the prune lock: nothing was done.
    ran: bool = True
    #: False when a batch gave up (a lock or statement timeout): the rest waits for the
    #: next pass.
    complete: bool = True
    #: Tasks removed by status (completed, cancelled, failed).
    tasks: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(_TASK_STATUSES, 0))
    #: Rows removed per table (:data:`PRUNED_TABLES`).
    removed: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(PRUNED_TABLES, 0))
    #: What was older than what: the cutoff of each kind of history (None: kept forever).
    cutoffs: dict[str, dt.datetime | None] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "ran": self.ran, "complete": self.complete,
            "tasks": dict(self.tasks), "removed": dict(self.removed),
            "cutoffs": {name: None if at is None else at.isoformat()
                        for name, at in self.cutoffs.items()},
            "seconds": round(self.seconds, 3),
        }

    def _add(self, **rows: int) -> None:
        for table, count in rows.items():
            self.removed[table] += count


#: Errors that end a pass early without failing it: a batch waited too long for a lock
#: or ran too long (``runner.store.retention.BATCH_*_TIMEOUT``).
_GAVE_UP: Final = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)


async def prune(
    conn: Conn, policy: RetentionPolicy, *, dry_run: bool = False, helpers: Sequence[Conn] = ()
) -> PruneReport:
    """One pass over every kind of history on ``conn`` (an autocommit connection). A
    real pass must hold the prune lock (:func:`runner.store.retention.try_lock`). Tasks
    are deleted on ``conn`` and each of ``helpers`` at once."""
    started = time.monotonic()
    report = PruneReport(dry_run=dry_run)
    now = await store.now(conn)
    for status in _TASK_STATUSES:
        report.cutoffs[f"{status}_tasks"] = _cutoff(now, policy.days_for(status))
    report.cutoffs["unreferenced_jobs"] = _cutoff(now, policy.job_days)
    report.cutoffs["llm_calls"] = _cutoff(now, policy.ledger_retention_days)
    # Webhook events and their delivery attempts live as long as completed tasks.
    report.cutoffs["webhook_events"] = _cutoff(now, policy.days_for("completed"))
    try:
        await _tasks([conn, *helpers], policy, report)
        await _runs(conn, policy, report)
        await _orphan_jobs(conn, policy, report)
        await _ledger(conn, policy, report)
        await _webhook_events(conn, policy, report)
    except _GAVE_UP as exc:
        report.complete = False
        logger.warning("prune_interrupted", extra={"error": str(exc).strip(),
                                                   "removed": dict(report.removed)})
    if not dry_run:
        await store.finish(conn)
    report.seconds = time.monotonic() - started
    return report


async def _tasks(conns: Sequence[Conn], policy: RetentionPolicy, report: PruneReport) -> None:
    for status in _TASK_STATUSES:
        cutoff = report.cutoffs[f"{status}_tasks"]
        if cutoff is None:
            continue
        if report.dry_run:
            _count_tasks(report, status, await store.count_tasks(conns[0], status=status,
                                                                 cutoff=cutoff))
            continue
        if len(conns) == 1:
            await _delete_tasks(conns[0], status, cutoff, policy, report)
            continue
        # Each worker stops at its first short batch; the last one standing takes what the
        # others' locked rows hid from it. The first error is raised once all have ended.
        outcomes = await asyncio.gather(
            *(_delete_tasks(conn, status, cutoff, policy, report) for conn in conns),
            return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


async def _delete_tasks(
    conn: Conn, status: str, cutoff: dt.datetime, policy: RetentionPolicy, report: PruneReport
) -> None:
    while True:
        batch = await store.delete_tasks(conn, status=status, cutoff=cutoff,
                                         limit=policy.batch_size)
        _count_tasks(report, status, batch)
        if batch.tasks < policy.batch_size:
            return


def _count_tasks(report: PruneReport, status: str, batch: store.TaskBatch) -> None:
    report.tasks[status] += batch.tasks
    report._add(agent_tasks=batch.tasks, agent_executions=batch.executions,
                agent_task_logs=batch.logs, procrastinate_jobs=batch.jobs,
                procrastinate_events=batch.events)


async def _runs(conn: Conn, policy: RetentionPolicy, report: PruneReport) -> None:
    for status in ("completed", "failed"):
        cutoff = report.cutoffs[f"{status}_tasks"]
        if cutoff is None:
            continue
        if report.dry_run:
            batch = await store.count_runs(conn, status=status, cutoff=cutoff)
            report._add(workflow_runs=batch.runs, workflow_run_steps=batch.steps)
            continue
        while True:
            batch = await store.delete_runs(conn, status=status, cutoff=cutoff,
                                            limit=policy.batch_size)
            report._add(workflow_runs=batch.runs, workflow_run_steps=batch.steps)
            if batch.runs < policy.batch_size:
                break


async def _orphan_jobs(conn: Conn, policy: RetentionPolicy, report: PruneReport) -> None:
    cutoff = report.cutoffs["unreferenced_jobs"]
    if cutoff is None:
        return
    after = await store.orphan_scan_start(conn)
    # Every batch judges batch_size jobs and moves on, so the loop ends after the jobs
    # deferred before the cutoff have each been judged once.
    while True:
        if report.dry_run:
            batch = await store.count_orphan_jobs(conn, after=after, cutoff=cutoff,
                                                  limit=policy.batch_size)
        else:
            batch = await store.delete_orphan_jobs(conn, after=after, cutoff=cutoff,
                                                   limit=policy.batch_size)
        report._add(procrastinate_jobs=batch.jobs, procrastinate_events=batch.events)
        if batch.reached_cutoff or batch.scanned < policy.batch_size or batch.through is None:
            return
        after = batch.through


async def _ledger(conn: Conn, policy: RetentionPolicy, report: PruneReport) -> None:
    cutoff = report.cutoffs["llm_calls"]
    if cutoff is None:
        return
    if report.dry_run:
        report._add(llm_calls=await store.count_ledger(conn, cutoff=cutoff))
        return
    while True:
        deleted = await store.delete_ledger(conn, cutoff=cutoff, limit=policy.batch_size)
        report._add(llm_calls=deleted)
        if deleted < policy.batch_size:
            return


async def _webhook_events(conn: Conn, policy: RetentionPolicy, report: PruneReport) -> None:
    cutoff = report.cutoffs["webhook_events"]
    if cutoff is None:
        return
    if report.dry_run:
        events, deliveries = await store.count_webhook_events(conn, cutoff=cutoff)
        report._add(webhook_events=events, webhook_deliveries=deliveries)
        return
    while True:
        events, deliveries = await store.delete_webhook_events(
            conn, cutoff=cutoff, limit=policy.batch_size)
        report._add(webhook_events=events, webhook_deliveries=deliveries)
        if events < policy.batch_size:
            return


async def prune_locked(
    conn: Conn, policy: RetentionPolicy, *, dry_run: bool = False, helpers: Sequence[Conn] = ()
) -> PruneReport:
    """:func:`prune` under the prune lock; a report with ``ran=False`` when another
    session holds it. A dry run takes no lock: it changes nothing."""
    if dry_run:
        return await prune(conn, policy, dry_run=True)
    if not await store.try_lock(conn):
        return PruneReport(dry_run=False, ran=False)
    try:
        return await prune(conn, policy, helpers=helpers)
    finally:
        # A broken connection has lost its session, and the lock with it.
        with contextlib.suppress(psycopg.Error):
            await store.unlock(conn)


async def prune_once(pool: AsyncConnectionPool[Any], settings: Settings) -> PruneReport:
    """The daemon's automatic prune: one pass unless another daemon is pruning, logged
    (``prune_finished``) and counted (``agent_runner_pruned_rows_total``)."""
    policy = RetentionPolicy.from_settings(settings)
    async with pool.connection() as conn:
        report = await prune_locked(conn, policy)
    if not report.ran:
        logger.debug("prune_skipped", extra={"reason": "another session is pruning"})
        return report
    metrics.rows_pruned(report.removed)
    logger.info("prune_finished", extra={
        "removed": {table: n for table, n in report.removed.items() if n},
        "tasks": {status: n for status, n in report.tasks.items() if n},
        "complete": report.complete, "seconds": round(report.seconds, 3)})
    return report


async def prune_database(
    conninfo: str, settings: Settings, *, dry_run: bool = False, workers: int = 1
) -> PruneReport:
    """``agent-runner prune``: one pass on connections of its own (``workers`` of them
    delete tasks)."""
    policy = RetentionPolicy.from_settings(settings)
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(
                     await psycopg.AsyncConnection.connect(conninfo, autocommit=True))
                 for _ in range(1 if dry_run else workers)]
        return await prune_locked(conns[0], policy, dry_run=dry_run, helpers=conns[1:])
