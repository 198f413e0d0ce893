"""The delivery seam: everything that touches procrastinate, the delivery engine.

procrastinate claims jobs with ``SKIP LOCKED`` at bounded concurrency, wakes on
LISTEN/NOTIFY with polling as the fallback, and relays abort requests. One job carries
one attempt of one task (see ``sql/0001_core.sql``, ``runner_defer_attempt``); the truth
about tasks lives in our tables, so this module only adapts the engine:

* the claim gate: while claiming is paused the worker finds no job; when several
  slots are free at once, one round trip fetches a job for each of them;
* the finished-by-attempt bookkeeping: an attempt's own finish statement already
  marked its job succeeded (one commit saved per attempt), so the engine's finish is
  skipped for it;
* waking the worker when a retry falls due, which procrastinate does not do by itself;
* riding through connection trouble: the worker's fetch, heartbeat and listener wait
  out a database that is away instead of stopping the worker, and a worker that stops
  anyway is started again in-process. Attempts are the daemon's, not the worker's: an
  attempt outlives a worker that goes away, keeps its slot, and writes its end when
  the database is back (fenced, as always).

Nothing else in the runner imports procrastinate (``runner.migrate`` reads its schema
files only).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

import procrastinate
import procrastinate.exceptions
import psycopg
from procrastinate import job_context, jobs
from procrastinate.manager import JobManager
from procrastinate.worker import Worker
from psycopg_pool import AsyncConnectionPool

from runner import sidetasks
from runner.executor import AttemptReport, Executor
from runner.outcomes import StopReason
from runner.settings import Settings
from runner.store import attempts as attempt_store

logger = logging.getLogger("runner.delivery")

#: The procrastinate queue and task name every attempt job is deferred with (the SQL
#: function ``runner_defer_attempt`` writes the same two names).
QUEUE: Final = "agent_runner"
TASK_NAME: Final = "agent_runner.attempt"
#: Connection trouble as procrastinate reports it too (it wraps psycopg's errors).
_TRANSIENT: Final = (*sidetasks.TRANSIENT_ERRORS, procrastinate.exceptions.ConnectorException)
#: How much later than a retry's due time the worker is woken (clock slack).
_WAKE_SLACK_SECONDS: Final = 0.005


def _wake(worker: Worker | None) -> None:
    """Make the worker fetch now (its own wake-up event: an internal of the pinned
    procrastinate)."""
    event = getattr(worker, "_new_job_event", None)
    if isinstance(event, asyncio.Event):
        event.set()


class ClaimGate(JobManager):
    """procrastinate's job manager, adapted: a claim switch, the jobs our attempts
    finished, and connection trouble that never stops the worker.

    `agent-runner pause` must stop claiming on every daemon while in-flight work
    finishes; stopping the worker would instead abort in-flight work after the grace
    period. Fetching nothing is exactly "stop claiming". It is also what the worker
    does while the database is away, and while attempts that outlived a restarted
    worker still fill the daemon's slots (no ``free_slots``).
    """

    def __init__(
        self, connector: Any, *, free_slots: Callable[[], int] = lambda: 1,
    ) -> None:
        super().__init__(connector)
        self.paused = False
        self._free_slots = free_slots
        #: Jobs fetched with another in one round trip, for the worker's next fetches
        #: (it asks once per free slot, at once); handed back if it stops first.
        self._fetched: collections.deque[jobs.Job] = collections.deque()
        #: Jobs whose attempt already marked them succeeded in its own finish.
        self.finished_by_attempt: set[int] = set()
        #: The worker this gate serves (its id is renewed if another daemon pruned it).
        self.worker: Worker | None = None
        self.fetch_failures = 0

    def _slots_to_fill(self) -> int:
        """The slot this fetch is for, and the others free right now: those the
        worker's semaphore (an internal of the pinned procrastinate) has left, as far
        as the daemon's own count of attempts in flight agrees."""
        semaphore = getattr(self.worker, "_job_semaphore", None)
        others = semaphore._value if isinstance(semaphore, asyncio.Semaphore) else 0
        return max(1, min(1 + others, self._free_slots()))

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> Any:
        # Jobs already fetched for free slots are served first, even if claiming was
        # paused since (a moment ago): they are this daemon's to run or hand back.
        if self._fetched:
            return self._fetched.popleft()
        if self.paused or self._free_slots() <= 0:
            return None
        try:
            rows = await self.connector.execute_query_all_async(
                query=attempt_store.FETCH_JOBS, queues=queues, worker_id=worker_id,
                count=self._slots_to_fill())
        except _TRANSIENT as exc:
            # The worker tries again at its next poll (or wake-up).
            self.fetch_failures += 1
            if self.fetch_failures == 1:
                logger.warning("delivery_fetch_failed", extra={"error": str(exc)})
            return None
        except psycopg.errors.ForeignKeyViolation:
            # Our procrastinate worker row was pruned while we could not heartbeat
            # (another worker took us for dead): register again, fetch next time.
            if self.worker is not None:
                self.worker.worker_id = await self.register_worker()
                logger.warning("delivery_worker_reregistered",
                               extra={"worker_id": self.worker.worker_id})
            return None
        if self.fetch_failures:
            logger.info("delivery_fetch_recovered", extra={"failures": self.fetch_failures})
            self.fetch_failures = 0
        if not rows:
            return None
        self._fetched.extend(jobs.Job.from_row(row) for row in rows[1:])
        return jobs.Job.from_row(rows[0])

    async def hand_back_fetched(self) -> None:
        """Jobs fetched for slots the worker never filled (it stopped first) go back to
        the queue now, not when they are found stalled."""
        while self._fetched:
            job = self._fetched[0]
            try:
                await self.retry_job(job)
            except _TRANSIENT as exc:
                # Kept for the next worker (a restart after connection trouble). If the
                # daemon exits first, the reconciler re-queues their tasks once the jobs
                # have sat fetched and unclaimed past the rescue threshold.
                logger.warning("delivery_hand_back_failed",
                               extra={"job_id": job.id, "error": str(exc)})
                return
            self._fetched.popleft()

    async def finish_job(self, job: Any, status: Any, delete_job: bool) -> None:
        # procrastinate's finish would fail on a job that is no longer 'doing'.
        if job.id in self.finished_by_attempt:
            self.finished_by_attempt.discard(job.id)
            return
        await sidetasks.retry_transient(
            lambda: JobManager.finish_job(self, job=job, status=status, delete_job=delete_job),
            "delivery_finish_job")

    async def update_heartbeat(self, worker_id: int) -> None:
        # procrastinate's own worker heartbeat: missing a few is harmless (the
        # daemon's heartbeat is what the rescuer reads), dying of one is not.
        try:
            await super().update_heartbeat(worker_id=worker_id)
        except _TRANSIENT as exc:
            logger.debug("delivery_heartbeat_failed", extra={"error": str(exc)})

    async def listen_for_jobs(self, *, on_notification: Any,
                              queues: Iterable[str] | None = None) -> None:
        """procrastinate's listener, reconnected after connection trouble; the worker
        polls meanwhile, and fetches at once when the listener is back."""
        retrying = sidetasks.Retrying(
            "delivery_listener", sidetasks.TransientPolicy(give_up_after=float("inf")))
        while True:
            try:
                await super().listen_for_jobs(on_notification=on_notification, queues=queues)
            except _TRANSIENT as exc:
                await retrying.failed(exc)
                _wake(self.worker)


class Delivery:
    """One daemon's procrastinate app and (supervised) worker, running attempts
    through ``executor``.

    ``stop_reason`` tells why an attempt is cancelled when procrastinate itself gives
    no reason (the daemon's hard stop); ``stopping`` whether the daemon is shutting
    down (then an attempt the worker gives up on is handed back; otherwise it runs on).
    """

    def __init__(
        self,
        executor: Executor,
        settings: Settings,
        *,
        name: str,
        stop_reason: Callable[[], StopReason | None] = lambda: None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._executor = executor
        self._settings = settings
        self._name = name
        self._stop_reason = stop_reason
        self._stopping = stopping
        self._stop_requested = False
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector())
        self.gate = ClaimGate(
            self.app.connector, free_slots=lambda: settings.concurrency - executor.in_flight)
        self.app.job_manager = self.gate
        self.worker: Worker | None = None
        #: attempts that outlived the worker that started them
        self._detached: set[asyncio.Task[AttemptReport]] = set()
        self.restarts = 0
        self._register_attempt_task()

    def _register_attempt_task(self) -> None:
        @self.app.task(name=TASK_NAME, queue=QUEUE, pass_context=True)
        async def attempt(context: job_context.JobContext, task_id: str) -> str:
            job_id = context.job.id
            assert job_id is not None
            return await self._run_attempt(context, uuid.UUID(task_id), job_id)

    async def _run_attempt(
        self, context: job_context.JobContext, task_id: uuid.UUID, job_id: int
    ) -> str:
        def reason() -> StopReason | None:
            aborted = context.abort_reason()
            if aborted is job_context.AbortReason.USER_REQUEST:
                return StopReason.USER_CANCEL
            if aborted is job_context.AbortReason.SHUTDOWN:
                return StopReason.SHUTDOWN
            return self._stop_reason()

        # The attempt is a task of its own: procrastinate cancels the job's task when
        # it aborts the job (an operator's cancel) or when its worker goes away.
        running = asyncio.ensure_future(self._executor.run_job(task_id, job_id, reason))
        running.add_done_callback(self._attempt_done)
        try:
            report = await asyncio.shield(running)
        except asyncio.CancelledError:
            if reason() is StopReason.USER_CANCEL or self._stopping():
                # Cancelled, or handed back at shutdown: the attempt records which.
                running.cancel()
                with contextlib.suppress(Exception):
                    await running
            else:
                # The worker is going away while the daemon lives on (a restart): the
                # attempt goes on, keeps its slot, and writes its own end.
                self._detached.add(running)
                logger.info("attempt_detached_from_worker", extra={"task_id": str(task_id)})
            raise
        return report.outcome.value

    def _attempt_done(self, running: asyncio.Task[AttemptReport]) -> None:
        self._detached.discard(running)
        if running.cancelled() or running.exception() is not None:
            return
        report = running.result()
        if report.ended_delivery_job:
            assert report.job_id is not None
            self.gate.finished_by_attempt.add(report.job_id)
        if report.due_again_in is not None:
            self.wake_after(report.due_again_in)
        elif self.gate.paused is False and self._executor.in_flight < self._settings.concurrency:
            # a slot is free again (matters for attempts that outlived their worker)
            _wake(self.worker)

    async def open(self, pool: AsyncConnectionPool) -> None:
        """Share the daemon's pool."""
        await self.app.open_async(pool=pool)

    def _new_worker(self) -> Worker:
        settings = self._settings
        worker = Worker(
            self.app,
            queues=[QUEUE],
            name=self._name,
            concurrency=settings.concurrency,
            fetch_job_polling_interval=settings.poll_interval,
            abort_job_polling_interval=min(2.0, settings.poll_interval),
            shutdown_graceful_timeout=settings.shutdown_grace,
            listen_notify=True,
            install_signal_handlers=False,
            update_heartbeat_interval=settings.heartbeat_interval,
            stalled_worker_timeout=settings.rescue_after,
        )
        self.gate.worker = worker
        return worker

    async def run(self) -> None:
        """Claim and run attempts until :meth:`stop`. A worker that stops by itself
        (its start failed while the database was away, one of its side tasks died) is
        started again after a backoff; attempts it leaves behind run on."""
        retrying = sidetasks.Retrying(
            "delivery_worker", sidetasks.TransientPolicy(
                give_up_after=self._settings.db_outage_limit))
        while not self._stop_requested:
            self.worker = self._new_worker()
            try:
                await self.worker.run()  # type: ignore[no-untyped-call]  # unannotated upstream
            except _TRANSIENT as exc:
                await self.gate.hand_back_fetched()
                if self._stop_requested:
                    break
                await retrying.failed(exc)
                self.restarts += 1
                continue
            await self.gate.hand_back_fetched()
            if self._stop_requested:
                break
            self.restarts += 1
            logger.warning("delivery_worker_restarting", extra={"restarts": self.restarts})
            await retrying.failed(RuntimeError("the delivery worker stopped by itself"))
        if self._detached:
            # Shutdown: the attempts that outlived their worker end like the others.
            await asyncio.wait(self._detached, timeout=self._settings.shutdown_grace)
            for running in list(self._detached):
                running.cancel()
            await asyncio.gather(*self._detached, return_exceptions=True)

    def stop(self) -> None:
        """Stop claiming; in-flight attempts get the grace period, then are handed back."""
        self._stop_requested = True
        if self.worker is not None:
            self.worker.stop()  # type: ignore[no-untyped-call]  # unannotated upstream

    def set_paused(self, paused: bool) -> bool:
        """Open or close the claim gate; True when that changed it."""
        if paused == self.gate.paused:
            return False
        self.gate.paused = paused
        if not paused:
            self.wake_after(0)
        return True

    def wake_after(self, delay: float) -> None:
        """Fetch again when a retry falls due, instead of waiting for the next poll.

        procrastinate wakes on NOTIFY for new jobs but not when a future job becomes
        due; without this a 1 s backoff would wait up to a whole poll interval.
        """
        asyncio.get_running_loop().call_later(
            max(0.0, delay) + _WAKE_SLACK_SECONDS, lambda: _wake(self.worker))
