"""Runs one attempt of one task: the pipeline every agent run goes through.

    start (claim, fenced) -> resolve agent -> validate payload -> run with timeout
    -> decide the outcome -> record it (fenced, with the agent's writes and the
    dependents' enqueue in one transaction) -> metrics

No connection is held while the agent runs. The outcome comes from the pure rules of
:mod:`runner.outcomes`; the executor only gathers what they need and writes the result.
It knows nothing of the delivery engine: it hands back an :class:`AttemptReport` and
:mod:`runner.delivery` does the engine's bookkeeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import httpx
from psycopg_pool import AsyncConnectionPool

from runner import metrics, sidetasks
from runner.api import Agent, AgentResult, CommitHook, backoff_delay
from runner.context import AttemptContext
from runner.errors import AgentOutcomeError, AgentResolutionError, FailPermanently, Fenced
from runner.outcomes import (
    Finish,
    Outcome,
    RetryBudget,
    StopReason,
    finish_for_error,
    finish_for_stop,
)
from runner.plugins import Registry
from runner.settings import Settings
from runner.store import attempts as store
from runner.store import llm as llm_store

logger = logging.getLogger("runner.executor")



@dataclasses.dataclass(frozen=True, slots=True)
class AttemptReport:
    """What the delivery seam needs to know once an attempt has ended."""

    outcome: Outcome
    #: the attempt's finish also ended its delivery job (see Outcome.ends_delivery_job)
    ended_delivery_job: bool
    #: seconds until the task is due again, when it was re-queued with a delay
    due_again_in: float | None = None
    job_id: int | None = None


def retry_delay(retry_number: int, *, base: float, cap: float) -> float:
    """The delay before task retry number ``retry_number`` (see ``backoff_delay``)."""
    return backoff_delay(retry_number, base=base, cap=cap)


class Executor:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        settings: Settings,
        registry: Registry,
        http: httpx.AsyncClient,
        daemon_id: UUID | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._agent_settings = settings.agent_view()
        self._registry = registry
        self._http = http
        self._daemon_id = daemon_id
        self._db_policy = sidetasks.TransientPolicy(give_up_after=settings.db_outage_limit)
        self._llm_limits = llm_store.Limits(
            requests=settings.llm_rpm, input_tokens=settings.llm_itpm,
            output_tokens=settings.llm_otpm, window_seconds=settings.llm_limit_window,
            enabled=settings.llm_limiter,
        )
        #: the attempt tasks this executor runs, by task id
        self.running: dict[UUID, asyncio.Task[Any]] = {}
        #: why an attempt was cancelled through :meth:`cancel`
        self._cancel_reasons: dict[UUID, StopReason] = {}

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def running_task_ids(self) -> list[UUID]:
        return list(self.running)

    def cancel(self, task_id: UUID, reason: StopReason) -> bool:
        """Cancel a running attempt from outside; it records ``reason``'s finish."""
        running = self.running.get(task_id)
        if running is None:
            return False
        self._cancel_reasons.setdefault(task_id, reason)
        running.cancel()
        return True

    async def run_job(
        self,
        task_id: UUID,
        job_id: int,
        stop_reason: Callable[[], StopReason | None] = lambda: None,
    ) -> AttemptReport:
        """Run the attempt carried by delivery job ``job_id``, to its recorded end.

        ``stop_reason`` tells, when the attempt is cancelled from outside, whether an
        operator cancelled the task or the daemon is shutting down; the attempt then
        records that end (cancelled, or handed back) and returns it. The claim and the
        finish are shielded from cancellation: neither is abandoned half way, and
        connection trouble is retried while the database is away (up to
        ``RUNNER_DB_OUTAGE_LIMIT``).
        """
        claimed, cancelled = await sidetasks.run_to_end(sidetasks.retry_transient(
            lambda: self._claim(task_id, job_id), "attempt_claim", self._db_policy))
        if claimed is None:
            logger.info("attempt_skipped", extra={"task_id": str(task_id), "job_id": job_id})
            return AttemptReport(Outcome.SKIPPED, ended_delivery_job=False, job_id=job_id)
        attempt, agent_active = claimed
        agent_type = attempt.agent.agent_type
        wait = max(0.0, (attempt.started_at - attempt.scheduled_for).total_seconds())
        metrics.task_started(agent_type=agent_type, queue_wait_seconds=wait)
        current = asyncio.current_task()
        if current is not None:
            self.running[task_id] = current
        metrics.set_in_flight(self.in_flight)
        began = time.monotonic()
        try:
            report = await self._run_and_record(
                attempt, agent_active, stop_reason, cancelled_while_claiming=cancelled)
        finally:
            self.running.pop(task_id, None)
            self._cancel_reasons.pop(task_id, None)
            metrics.set_in_flight(self.in_flight)
        metrics.attempt_finished(
            agent_type=agent_type, outcome=report.outcome,
            duration_seconds=time.monotonic() - began,
        )
        return report

    async def _claim(
        self, task_id: UUID, job_id: int
    ) -> tuple[store.StartedAttempt, bool] | None:
        async with self._pool.connection() as conn:
            return await store.start_attempt(
                conn, task_id=task_id, job_id=job_id, daemon_id=self._daemon_id
            )

    async def _run_and_record(
        self,
        attempt: store.StartedAttempt,
        agent_active: bool,
        stop_reason: Callable[[], StopReason | None],
        *,
        cancelled_while_claiming: bool = False,
    ) -> AttemptReport:
        context: AttemptContext | None = None
        commit_hook: CommitHook | None = None
        try:
            if cancelled_while_claiming:
                raise asyncio.CancelledError
            agent, payload = self._resolve(attempt, agent_active)
            context = await self._context(attempt)
            result = await self._run_agent(agent, context, payload, attempt)
            commit_hook = result.commit
            finish = Finish.completed(result.output, result.summary)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                while current.uncancel():
                    pass
            finish = finish_for_stop(await self._stop_reason(attempt, stop_reason()))
        except Exception as exc:
            if not isinstance(exc, AgentOutcomeError | AgentResolutionError | TimeoutError):
                # Anything unexpected is treated as transient; say where it came from.
                logger.exception("agent_error", extra={"task_id": str(attempt.task_id)})
            finish = finish_for_error(
                exc, self._retry_budget(attempt), timeout_seconds=attempt.agent.timeout_seconds)
        if context is not None:
            finish = finish.with_metrics(context.execution_metrics())
            await sidetasks.run_to_end(self._close_context(context))
        # The finish also ends the delivery job (one transaction saved per attempt). A
        # cancellation that arrives while the end is being written is moot: the
        # attempt has ended, and its end (completed work included) is kept.
        report, _ = await sidetasks.run_to_end(self._record(attempt, finish, commit_hook))
        return report

    @staticmethod
    async def _close_context(context: AttemptContext) -> None:
        """Release the budget reservations the attempt still holds. Best effort: they
        expire by themselves (after the agent's timeout) if this fails."""
        try:
            await context.close()
        except Exception:
            logger.warning("llm_reservations_not_released",
                           extra={"task_id": str(context.task_id)}, exc_info=True)

    def _resolve(self, attempt: store.StartedAttempt, agent_active: bool) -> tuple[Agent, Any]:
        """The agent for the task's type and its validated payload."""
        agent = self._registry.get(attempt.agent.agent_type)
        if not agent_active:
            raise FailPermanently(f"agent {attempt.agent.name!r} is disabled")
        return agent, self._registry.validate(attempt.agent.agent_type, attempt.payload)

    async def _context(self, attempt: store.StartedAttempt) -> AttemptContext:
        parents: Mapping[str, Mapping[str, Any]] = {}
        if attempt.parent_task_ids:  # a workflow step: its parents' outputs
            async with self._pool.connection() as conn:
                parents = await store.parent_outputs(conn, attempt.parent_task_ids)
        return AttemptContext(
            pool=self._pool,
            attempt=attempt,
            settings=self._agent_settings,
            http=self._http,
            parent_outputs=parents,
            llm_limits=self._llm_limits,
            llm_replay=self._settings.llm_replay,
        )

    @staticmethod
    async def _run_agent(
        agent: Agent, context: AttemptContext, payload: Any, attempt: store.StartedAttempt
    ) -> AgentResult:
        """Run with the agent's timeout; no connection is held meanwhile."""
        async with asyncio.timeout(attempt.agent.timeout_seconds):
            result = await agent.run(context, payload)
        if not isinstance(result, AgentResult):
            raise FailPermanently(
                f"agent returned {type(result).__name__}, expected AgentResult"
            )
        return result

    async def _stop_reason(
        self, attempt: store.StartedAttempt, reason: StopReason | None
    ) -> StopReason:
        """Why we were cancelled: the delivery engine knows when it aborted the job; a
        bare cancellation is an operator's cancel if the task asks for one, else a stop."""
        explicit = self._cancel_reasons.get(attempt.task_id)
        if explicit is not None:
            return explicit
        if reason is not None:
            return reason
        async with self._pool.connection() as conn:
            if await store.task_cancel_requested(conn, attempt.task_id):
                return StopReason.USER_CANCEL
        return StopReason.SHUTDOWN

    def _retry_budget(self, attempt: store.StartedAttempt) -> RetryBudget:
        settings = self._settings
        return RetryBudget(
            retry_count=attempt.retry_count,
            max_retries=attempt.max_retries,
            backoff=lambda n: retry_delay(
                n, base=settings.retry_base_delay, cap=settings.retry_max_delay),
        )

    async def _record(
        self, attempt: store.StartedAttempt, finish: Finish, commit_hook: CommitHook | None,
        *, fallback: bool = True,
    ) -> AttemptReport:
        """Write the attempt's end (fenced). Connection trouble is retried until the
        database is back; an end the database refuses is recorded as a failed attempt
        instead, so that it is never left for the rescuer."""
        try:
            finish = await sidetasks.retry_transient(
                lambda: self._write(attempt, finish, commit_hook), "attempt_finish",
                self._db_policy)
        except Fenced as exc:
            logger.warning("attempt_fenced", extra={"task_id": str(attempt.task_id),
                                                    "reason": str(exc)})
            return AttemptReport(Outcome.FENCED, ended_delivery_job=False,
                                 job_id=attempt.job_id)
        except sidetasks.TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            if not fallback:
                raise  # the failure could not be written either: the rescuer's turn
            # The end could not be written (the agent's writes failed, or a value the
            # database refuses): nothing of it landed, so record a failed attempt
            # instead, retried while retries remain.
            logger.exception("finish_failed", extra={"task_id": str(attempt.task_id)})
            failure = self._retry_budget(attempt).retry_or_fail(
                f"writing results failed: {type(exc).__name__}: {exc}",
                delay=None, timed_out=False,
            )
            return await self._record(
                attempt, failure.with_metrics(finish.metrics), None, fallback=False)
        return AttemptReport(
            finish.outcome,
            ended_delivery_job=finish.outcome.ends_delivery_job,
            due_again_in=finish.run_at_delay_seconds if finish.task_status == "pending"
            else None,
            job_id=attempt.job_id,
        )

    async def _write(
        self, attempt: store.StartedAttempt, finish: Finish, commit_hook: CommitHook | None
    ) -> Finish:
        # Dependents are enqueued by a trigger on agent_tasks (sql/0005) inside the
        # same statement that completes the task, so they commit with it.
        async with self._pool.connection() as conn:
            if commit_hook is None or finish.outcome is not Outcome.COMPLETED:
                # The finish alone is one atomic statement: no BEGIN/COMMIT needed.
                await store.finish_attempt(conn, attempt, finish, finish_job=True)
                return finish
            async with conn.transaction():
                # Ownership first: a fenced attempt writes nothing at all. The hook
                # then runs before the finish so that figures it returns land in the
                # stored output.
                await store.lock_owned_task(conn, attempt)
                extra = await commit_hook(conn)
                if extra:
                    finish = finish.with_output(extra)
                await store.finish_attempt(conn, attempt, finish, finish_job=True)
        return finish
