"""Runs one attempt of one task: the pipeline every agent run goes through.

    start (claim, fenced) -> resolve agent -> validate payload -> run with timeout
    -> decide the outcome -> record it (fenced, with the agent's writes and the
    dependents' enqueue in one transaction) -> metrics

No connection is held while the agent runs. Outcomes form a closed set; this module is
the only place that maps agent behaviour to task states.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import httpx
from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.api import (
    AgentResult,
    CancelTask,
    CommitHook,
    FailPermanently,
    RetryLater,
    backoff_delay,
)
from runner.context import AttemptContext
from runner.errors import Fenced
from runner.registry import InvalidPayload, Registry, UnknownAgentType
from runner.settings import Settings
from runner.store import attempts as store

logger = logging.getLogger("runner.executor")



class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    RETRY = "retry"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # handed back at shutdown, no retry spent
    FENCED = "fenced"  # the attempt lost its task before it could finish
    SKIPPED = "skipped"  # the job was stale: task cancelled or re-queued elsewhere


#: Outcomes whose finish also ended the procrastinate job (see ``Executor.run_job``).
JOB_FINISHED_BY_ATTEMPT = frozenset({"completed", "retry", "failed", "timeout", "cancelled"})


class StopReason(enum.Enum):
    """Why the executor cancelled a running attempt from outside."""

    USER_CANCEL = "user_cancel"
    SHUTDOWN = "shutdown"


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
        on_retry_scheduled: Callable[[float], None] | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._registry = registry
        self._http = http
        self._daemon_id = daemon_id
        self._on_retry_scheduled = on_retry_scheduled
        self.running: dict[UUID, asyncio.Task[Any]] = {}

    @property
    def in_flight(self) -> int:
        return len(self.running)

    async def run_job(
        self,
        task_id: UUID,
        job_id: int,
        stop_reason: Callable[[], StopReason | None] = lambda: None,
    ) -> Outcome:
        """Run the attempt carried by procrastinate job ``job_id``.

        ``stop_reason`` tells, when the attempt is cancelled from outside, whether an
        operator cancelled the task or the daemon is shutting down.
        """
        async with self._pool.connection() as conn:
            claimed = await store.start_attempt(
                conn, task_id=task_id, job_id=job_id, daemon_id=self._daemon_id
            )
        if claimed is None:
            logger.info("attempt_skipped", extra={"task_id": str(task_id), "job_id": job_id})
            return Outcome.SKIPPED
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
            outcome = await self._run_and_record(attempt, agent_active, stop_reason)
        finally:
            self.running.pop(task_id, None)
            metrics.set_in_flight(self.in_flight)
        metrics.attempt_finished(
            agent_type=agent_type, outcome=outcome.value, duration_seconds=time.monotonic() - began
        )
        return outcome

    async def _run_and_record(
        self,
        attempt: store.StartedAttempt,
        agent_active: bool,
        stop_reason: Callable[[], StopReason | None],
    ) -> Outcome:
        context: AttemptContext | None = None
        commit_hook: CommitHook | None = None
        cancelled_from_outside = False
        try:
            agent = self._registry.get(attempt.agent.agent_type)
            if not agent_active:
                raise FailPermanently(f"agent {attempt.agent.name!r} is disabled")
            payload = self._registry.validate(attempt.agent.agent_type, attempt.payload)
            async with self._pool.connection() as conn:
                parents = await store.parent_outputs(conn, attempt.parent_task_ids)
            context = AttemptContext(
                pool=self._pool,
                attempt=attempt,
                settings=self._settings.agent_view(),
                http=self._http,
                parent_outputs=parents,
            )
            async with asyncio.timeout(attempt.agent.timeout_seconds):
                result = await agent.run(context, payload)
            if not isinstance(result, AgentResult):
                raise FailPermanently(
                    f"agent returned {type(result).__name__}, expected AgentResult"
                )
            commit_hook = result.commit
            finish = store.Finish(
                "completed", "completed", output=result.output, summary=result.summary
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            cancelled_from_outside = True
            finish = await self._cancelled(attempt, stop_reason())
        except (UnknownAgentType, InvalidPayload, FailPermanently) as exc:
            finish = store.Finish("failed", "failed", error=str(exc))
        except CancelTask as exc:
            finish = store.Finish("cancelled", "cancelled", error=str(exc) or "cancelled by agent")
        except TimeoutError:
            finish = self._retry_or_fail(
                attempt, "timeout",
                f"timed out after {attempt.agent.timeout_seconds} s", None,
            )
        except RetryLater as exc:
            finish = self._retry_or_fail(attempt, "failed", str(exc), exc.delay)
        except Exception as exc:
            # Anything unexpected is treated as transient: retried with backoff.
            logger.exception("agent_error", extra={"task_id": str(attempt.task_id)})
            finish = self._retry_or_fail(attempt, "failed", f"{type(exc).__name__}: {exc}", None)
        if context is not None:
            finish = _with_metrics(finish, context.execution_metrics())
        # When the attempt ends normally its finish also ends the procrastinate job,
        # saving procrastinate's own finish transaction; a cancellation from outside is
        # re-raised below and procrastinate records the job as aborted itself.
        outcome = await self._record(
            attempt, finish, commit_hook, finish_job=not cancelled_from_outside
        )
        if cancelled_from_outside and outcome is not Outcome.FENCED:
            # Let procrastinate see the cancellation so its job ends 'aborted'.
            raise asyncio.CancelledError
        return outcome

    async def _cancelled(
        self, attempt: store.StartedAttempt, reason: StopReason | None
    ) -> store.Finish:
        if reason is None:
            async with self._pool.connection() as conn:
                if await store.task_cancel_requested(conn, attempt.task_id):
                    reason = StopReason.USER_CANCEL
        if reason is StopReason.USER_CANCEL:
            return store.Finish("cancelled", "cancelled", error="cancelled while running")
        # Shutdown: hand the task back for the next daemon without spending a retry.
        return store.Finish(
            "interrupted", "pending", error="interrupted by daemon shutdown; handed back",
            spend_retry=False,
        )

    def _retry_or_fail(
        self, attempt: store.StartedAttempt, execution_status: str, error: str,
        delay: float | None,
    ) -> store.Finish:
        if attempt.retry_count >= attempt.max_retries:
            return store.Finish(
                execution_status, "failed",
                error=f"{error} (gave up after {attempt.retry_count} retries)",
            )
        if delay is None:
            delay = retry_delay(
                attempt.retry_count + 1,
                base=self._settings.retry_base_delay,
                cap=self._settings.retry_max_delay,
            )
        return store.Finish(
            execution_status, "pending", error=error, spend_retry=True,
            run_at_delay_seconds=delay,
        )

    async def _record(
        self,
        attempt: store.StartedAttempt,
        finish: store.Finish,
        commit_hook: CommitHook | None,
        *,
        finish_job: bool,
    ) -> Outcome:
        try:
            # Dependents are enqueued by a trigger on agent_tasks (sql/0005) inside the
            # same statement that completes the task, so they commit with it.
            async with self._pool.connection() as conn:
                if commit_hook is None or finish.task_status != "completed":
                    # The finish alone is one atomic statement: no BEGIN/COMMIT needed.
                    await store.finish_attempt(conn, attempt, finish, finish_job=finish_job)
                else:
                    async with conn.transaction():
                        # Ownership first: a fenced attempt writes nothing at all. The
                        # hook then runs before the finish so that figures it returns
                        # land in the stored output.
                        await store.lock_owned_task(conn, attempt)
                        extra = await commit_hook(conn)
                        if extra:
                            finish = dataclasses.replace(
                                finish, output={**(finish.output or {}), **extra}
                            )
                        await store.finish_attempt(
                            conn, attempt, finish, finish_job=finish_job)
        except Fenced as exc:
            logger.warning("attempt_fenced", extra={"task_id": str(attempt.task_id),
                                                    "reason": str(exc)})
            return Outcome.FENCED
        except Exception as exc:
            if finish.task_status != "completed":
                raise
            # The agent's writes failed to commit: nothing of the attempt landed, so
            # record it as a failed attempt instead (retried while retries remain).
            logger.exception("commit_failed", extra={"task_id": str(attempt.task_id)})
            failure = self._retry_or_fail(
                attempt, "failed", f"writing results failed: {type(exc).__name__}: {exc}", None
            )
            return await self._record(
                attempt, _with_metrics(failure, finish.metrics), None, finish_job=finish_job)
        if finish.task_status == "pending" and self._on_retry_scheduled is not None:
            self._on_retry_scheduled(finish.run_at_delay_seconds)
        return _outcome_of(finish)


def _with_metrics(finish: store.Finish, figures: Mapping[str, Any]) -> store.Finish:
    return dataclasses.replace(finish, metrics={**finish.metrics, **figures})


def _outcome_of(finish: store.Finish) -> Outcome:
    if finish.task_status == "completed":
        return Outcome.COMPLETED
    if finish.task_status == "cancelled":
        return Outcome.CANCELLED
    if finish.task_status == "failed":
        return Outcome.FAILED
    if finish.execution_status == "interrupted":
        return Outcome.INTERRUPTED
    if finish.execution_status == "timeout":
        return Outcome.TIMEOUT
    return Outcome.RETRY
