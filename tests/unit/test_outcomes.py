"""The closed outcome vocabulary and the pure exception -> finish mapping."""

from __future__ import annotations

import datetime as dt

import pytest

from runner.errors import (
    CancelTask,
    DeferUntil,
    FailPermanently,
    InvalidPayload,
    RetryLater,
    UnknownAgentType,
)
from runner.outcomes import (
    Finish,
    Outcome,
    RetryBudget,
    StopReason,
    finish_for_error,
    finish_for_stop,
)


def budget(retry_count: int = 0, max_retries: int = 3) -> RetryBudget:
    return RetryBudget(retry_count=retry_count, max_retries=max_retries,
                       backoff=lambda n: 10.0 * n)


@pytest.mark.parametrize("exc", [
    FailPermanently("bad key"), UnknownAgentType("no such type"), InvalidPayload("payload: x"),
])
def test_permanent_errors_fail_at_once_without_spending_retries(exc: Exception) -> None:
    finish = finish_for_error(exc, budget(), timeout_seconds=5)
    assert (finish.outcome, finish.execution_status, finish.task_status) == (
        Outcome.FAILED, "failed", "failed")
    assert finish.error == str(exc)
    assert not finish.spend_retry


def test_cancel_task_cancels_with_its_message_or_a_default() -> None:
    assert finish_for_error(CancelTask("not needed"), budget(), timeout_seconds=5).error == \
        "not needed"
    finish = finish_for_error(CancelTask(), budget(), timeout_seconds=5)
    assert (finish.outcome, finish.task_status, finish.error) == (
        Outcome.CANCELLED, "cancelled", "cancelled by agent")


def test_retry_later_uses_its_own_delay_or_the_backoff() -> None:
    own = finish_for_error(RetryLater("busy", delay=7.5), budget(), timeout_seconds=5)
    assert (own.outcome, own.execution_status, own.task_status) == (Outcome.RETRY, "failed",
                                                                    "pending")
    assert own.spend_retry and own.run_at_delay_seconds == 7.5
    backed_off = finish_for_error(RetryLater("busy"), budget(retry_count=1), timeout_seconds=5)
    assert backed_off.run_at_delay_seconds == 20.0  # retry number 2


def test_timeout_is_retried_then_fails_with_the_timeout_status() -> None:
    first = finish_for_error(TimeoutError(), budget(), timeout_seconds=300)
    assert (first.outcome, first.execution_status, first.task_status) == (
        Outcome.TIMEOUT, "timeout", "pending")
    assert first.error == "timed out after 300 s"
    last = finish_for_error(TimeoutError(), budget(retry_count=3), timeout_seconds=300)
    assert (last.outcome, last.execution_status, last.task_status) == (
        Outcome.FAILED, "timeout", "failed")
    assert last.error == "timed out after 300 s (gave up after 3 retries)"


def test_unexpected_errors_are_transient_and_named() -> None:
    finish = finish_for_error(KeyError("x"), budget(), timeout_seconds=5)
    assert finish.outcome is Outcome.RETRY
    assert finish.error == "KeyError: 'x'"
    gave_up = finish_for_error(KeyError("x"), budget(retry_count=3), timeout_seconds=5)
    assert gave_up.outcome is Outcome.FAILED


def test_stops_from_outside() -> None:
    cancelled = finish_for_stop(StopReason.USER_CANCEL)
    assert (cancelled.outcome, cancelled.task_status) == (Outcome.CANCELLED, "cancelled")
    handed_back = finish_for_stop(StopReason.SHUTDOWN)
    assert (handed_back.outcome, handed_back.execution_status, handed_back.task_status) == (
        Outcome.INTERRUPTED, "interrupted", "pending")
    assert not handed_back.spend_retry and handed_back.run_at_delay_seconds == 0


def test_only_finishes_that_wrote_their_end_close_the_delivery_job() -> None:
    assert {o for o in Outcome if not o.ends_delivery_job} == {Outcome.FENCED, Outcome.SKIPPED}


def test_finish_helpers_merge_figures() -> None:
    finish = Finish.completed({"a": 1}).with_output({"b": 2}).with_metrics({"llm_calls": 1})
    assert finish.output == {"a": 1, "b": 2} and finish.metrics == {"llm_calls": 1}
    assert Finish.retry("x", delay=-1).run_at_delay_seconds == 0.0


def test_defer_until_requeues_at_its_time_without_spending_a_retry() -> None:
    now = dt.datetime(2026, 12, 6, 22, 0, tzinfo=dt.UTC)
    at = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    # Even with no retries left: a deferral is not a failure of the attempt.
    exhausted = RetryBudget(retry_count=3, max_retries=3, backoff=lambda n: 1.0)
    finish = finish_for_error(DeferUntil("budget reached: x", at=at), exhausted,
                              timeout_seconds=30, now=now)
    assert finish.outcome is Outcome.DEFERRED
    assert (finish.task_status, finish.execution_status) == ("pending", "interrupted")
    assert finish.spend_retry is False
    assert finish.run_at_delay_seconds == 2 * 3600
    assert finish.error == "budget reached: x"
    assert finish.outcome.ends_delivery_job
    # A time already past is due at once.
    assert Finish.deferred("late", delay=-5).run_at_delay_seconds == 0


def test_defer_until_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        DeferUntil("x", at=dt.datetime(2026, 12, 7))
