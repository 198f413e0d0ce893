"""How an attempt ends: the closed vocabulary, and the pure rules that pick one.

Every attempt ends in exactly one :class:`Outcome`. A :class:`Finish` is what gets
written for it (the execution's status, the task's next status, output or error, a
retry's delay); it is built only through its constructors, so the pairs of statuses
can never disagree. :func:`finish_for_error` and :func:`finish_for_stop` map what
happened to a finish and do no I/O: the executor calls them, the metrics count their
outcomes, and the delivery seam asks :attr:`Outcome.ends_delivery_job`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable, Mapping
from typing import Any

from runner.errors import (
    AgentResolutionError,
    CancelTask,
    DeferUntil,
    FailPermanently,
    RetryLater,
)


class Outcome(enum.StrEnum):
    """The end of one attempt (the ``outcome`` label of the attempt metrics)."""

    COMPLETED = "completed"
    #: failed, and the task was re-queued with backoff (a retry spent)
    RETRY = "retry"
    #: failed for good: permanent error, or no retries left
    FAILED = "failed"
    #: ran past the agent's timeout and was re-queued (a retry spent)
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    #: handed back at shutdown, no retry spent
    INTERRUPTED = "interrupted"
    #: pending again at a set time, no retry spent (an LLM budget reached)
    DEFERRED = "deferred"
    #: the attempt lost its task before it could finish: nothing was written
    FENCED = "fenced"
    #: the delivery job was stale (task cancelled, or re-queued under another job)
    SKIPPED = "skipped"

    @property
    def ends_delivery_job(self) -> bool:
        """Whether the attempt's own finish also marked its delivery job done, so the
        delivery engine must not finish it again. A fenced or skipped attempt wrote
        nothing."""
        return self not in (Outcome.FENCED, Outcome.SKIPPED)


class StopReason(enum.Enum):
    """Why a running attempt was cancelled from outside."""

    USER_CANCEL = "user_cancel"
    SHUTDOWN = "shutdown"


@dataclasses.dataclass(frozen=True, slots=True)
class Finish:
    """What is written when an attempt ends. Build it with the class methods."""

    outcome: Outcome
    #: agent_executions.status: completed | failed | timeout | cancelled | interrupted
    execution_status: str
    #: agent_tasks.status afterwards: completed | pending | failed | cancelled
    task_status: str
    output: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: when task_status is pending: whether a retry is spent (not for a hand-back)
    spend_retry: bool = False
    #: when task_status is pending: seconds until the task is due again
    run_at_delay_seconds: float = 0.0

    @classmethod
    def completed(
        cls, output: dict[str, Any], summary: dict[str, Any] | None = None
    ) -> Finish:
        return cls(Outcome.COMPLETED, "completed", "completed", output=output, summary=summary)

    @classmethod
    def failed(cls, error: str, *, timed_out: bool = False) -> Finish:
        """Failed for good: no retry, whatever remains."""
        return cls(Outcome.FAILED, "timeout" if timed_out else "failed", "failed", error=error)

    @classmethod
    def retry(cls, error: str, *, delay: float, timed_out: bool = False) -> Finish:
        """Failed; the task is due again in ``delay`` seconds, spending a retry."""
        return cls(
            Outcome.TIMEOUT if timed_out else Outcome.RETRY,
            "timeout" if timed_out else "failed", "pending",
            error=error, spend_retry=True, run_at_delay_seconds=max(0.0, delay),
        )

    @classmethod
    def cancelled(cls, error: str) -> Finish:
        return cls(Outcome.CANCELLED, "cancelled", "cancelled", error=error)

    @classmethod
    def interrupted(cls) -> Finish:
        """Handed back at shutdown: pending again at once, no retry spent."""
        return cls(
            Outcome.INTERRUPTED, "interrupted", "pending",
            error="interrupted by daemon shutdown; handed back",
        )

    @classmethod
    def deferred(cls, error: str, *, delay: float) -> Finish:
        """Not now: pending again, due in ``delay`` seconds, no retry spent."""
        # The attempt did not fail (nothing was wrong with it): its execution ends
        # like a hand-back, and the agent's failure figures do not count it.
        return cls(
            Outcome.DEFERRED, "interrupted", "pending",
            error=error, run_at_delay_seconds=max(0.0, delay),
        )

    def with_metrics(self, figures: Mapping[str, Any]) -> Finish:
        return dataclasses.replace(self, metrics={**self.metrics, **figures})

    def with_output(self, extra: Mapping[str, Any]) -> Finish:
        return dataclasses.replace(self, output={**(self.output or {}), **extra})


@dataclasses.dataclass(frozen=True, slots=True)
class RetryBudget:
    """What :func:`finish_for_error` needs to know about the task's retries."""

    #: retries spent so far
    retry_count: int
    max_retries: int
    #: the delay before retry number n (1-based), when the agent named none
    backoff: Callable[[int], float]

    def retry_or_fail(self, error: str, *, delay: float | None, timed_out: bool) -> Finish:
        if self.retry_count >= self.max_retries:
            return Finish.failed(
                f"{error} (gave up after {self.retry_count} retries)", timed_out=timed_out)
        if delay is None:
            delay = self.backoff(self.retry_count + 1)
        return Finish.retry(error, delay=delay, timed_out=timed_out)


def finish_for_error(
    exc: Exception, budget: RetryBudget, *, timeout_seconds: float,
    now: dt.datetime | None = None,
) -> Finish:
    """The finish for an attempt that raised ``exc`` (the closed mapping).

    Permanent (no retries spent): an agent that cannot be resolved or a payload its
    model refuses, and :class:`FailPermanently`. :class:`CancelTask` cancels.
    :class:`DeferUntil` re-queues at its time (``now``: the clock, for tests) without
    spending a retry, whatever retries remain. A timeout
    and :class:`RetryLater` are retried while retries remain; so is anything
    unexpected, which is treated as transient.
    """
    if isinstance(exc, AgentResolutionError | FailPermanently):
        return Finish.failed(str(exc))
    if isinstance(exc, DeferUntil):
        now = now or dt.datetime.now(dt.UTC)
        return Finish.deferred(str(exc), delay=(exc.at - now).total_seconds())
    if isinstance(exc, CancelTask):
        return Finish.cancelled(str(exc) or "cancelled by agent")
    if isinstance(exc, TimeoutError):
        return budget.retry_or_fail(
            f"timed out after {timeout_seconds:g} s", delay=None, timed_out=True)
    if isinstance(exc, RetryLater):
        return budget.retry_or_fail(str(exc), delay=exc.delay, timed_out=False)
    return budget.retry_or_fail(f"{type(exc).__name__}: {exc}", delay=None, timed_out=False)


def finish_for_stop(reason: StopReason) -> Finish:
    """The finish for an attempt cancelled from outside."""
    if reason is StopReason.USER_CANCEL:
        return Finish.cancelled("cancelled while running")
    return Finish.interrupted()
