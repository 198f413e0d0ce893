"""The delivery seam: everything that touches procrastinate, the delivery engine.

procrastinate claims jobs with ``SKIP LOCKED`` at bounded concurrency, wakes on
LISTEN/NOTIFY with polling as the fallback, and relays abort requests. One job carries
one attempt of one task (see ``sql/0001_core.sql``, ``runner_defer_attempt``); the truth
about tasks lives in our tables, so this module only adapts the engine:

* the claim gate: while claiming is paused the worker finds no job;
* the finished-by-attempt bookkeeping: an attempt's own finish statement already
  marked its job succeeded (one commit saved per attempt), so the engine's finish is
  skipped for it;
* waking the worker when a retry falls due, which procrastinate does not do by itself.

Nothing else in the runner imports procrastinate (``runner.migrate`` reads its schema
files only).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

import procrastinate
from procrastinate import job_context
from procrastinate.manager import JobManager
from procrastinate.worker import Worker
from psycopg_pool import AsyncConnectionPool

from runner.executor import Executor
from runner.outcomes import StopReason
from runner.settings import Settings

#: The procrastinate queue and task name every attempt job is deferred with (the SQL
#: function ``runner_defer_attempt`` writes the same two names).
QUEUE: Final = "agent_runner"
TASK_NAME: Final = "agent_runner.attempt"
#: How much later than a retry's due time the worker is woken (clock slack).
_WAKE_SLACK_SECONDS: Final = 0.005


class ClaimGate(JobManager):
    """procrastinate's job manager with a switch, and the jobs our attempts finished.

    `agent-runner pause` must stop claiming on every daemon while in-flight work
    finishes; stopping the worker would instead abort in-flight work after the grace
    period. Fetching nothing is exactly "stop claiming".
    """

    def __init__(self, connector: Any) -> None:
        super().__init__(connector)
        self.paused = False
        #: Jobs whose attempt already marked them succeeded in its own finish.
        self.finished_by_attempt: set[int] = set()

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> Any:
        if self.paused:
            return None
        return await super().fetch_job(queues=queues, worker_id=worker_id)

    async def finish_job(self, job: Any, status: Any, delete_job: bool) -> None:
        # procrastinate's finish would fail on a job that is no longer 'doing'.
        if job.id in self.finished_by_attempt:
            self.finished_by_attempt.discard(job.id)
            return
        await super().finish_job(job=job, status=status, delete_job=delete_job)


class Delivery:
    """One daemon's procrastinate app and worker, running attempts through ``executor``.

    ``stop_reason`` tells why an attempt is cancelled when procrastinate itself gives no
    reason (the daemon's hard stop).
    """

    def __init__(
        self,
        executor: Executor,
        settings: Settings,
        *,
        name: str,
        stop_reason: Callable[[], StopReason | None] = lambda: None,
    ) -> None:
        self._executor = executor
        self._settings = settings
        self._name = name
        self._stop_reason = stop_reason
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector())
        self.gate = ClaimGate(self.app.connector)
        self.app.job_manager = self.gate
        self.worker: Worker | None = None
        self._register_attempt_task()

    def _register_attempt_task(self) -> None:
        @self.app.task(name=TASK_NAME, queue=QUEUE, pass_context=True)
        async def attempt(context: job_context.JobContext, task_id: str) -> str:
            job_id = context.job.id
            assert job_id is not None

            def reason() -> StopReason | None:
                aborted = context.abort_reason()
                if aborted is job_context.AbortReason.USER_REQUEST:
                    return StopReason.USER_CANCEL
                if aborted is job_context.AbortReason.SHUTDOWN:
                    return StopReason.SHUTDOWN
                return self._stop_reason()

            report = await self._executor.run_job(uuid.UUID(task_id), job_id, reason)
            if report.ended_delivery_job:
                self.gate.finished_by_attempt.add(job_id)
            if report.due_again_in is not None:
                self.wake_after(report.due_again_in)
            return report.outcome.value

    async def open(self, pool: AsyncConnectionPool) -> None:
        """Share the daemon's pool, and build the worker."""
        await self.app.open_async(pool=pool)
        settings = self._settings
        self.worker = Worker(
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

    async def run(self) -> None:
        """Claim and run attempts until :meth:`stop`."""
        assert self.worker is not None, "open() first"
        await self.worker.run()  # type: ignore[no-untyped-call]  # procrastinate leaves it unannotated

    def stop(self) -> None:
        """Stop claiming; in-flight attempts get the grace period, then are aborted."""
        if self.worker is not None:
            self.worker.stop()  # type: ignore[no-untyped-call]

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
        due; without this a 1 s backoff would wait up to a whole poll interval. It sets
        the worker's own wake-up event (an internal of the pinned procrastinate).
        """

        def wake() -> None:
            event = getattr(self.worker, "_new_job_event", None)
            if isinstance(event, asyncio.Event):
                event.set()

        asyncio.get_running_loop().call_later(max(0.0, delay) + _WAKE_SLACK_SECONDS, wake)
