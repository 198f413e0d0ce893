"""The :class:`runner.api.AgentContext` the executor hands to an agent for one attempt.

LLM governance lives here for the agents (SQL in :mod:`runner.store.llm`):

* **Budgets.** :meth:`AttemptContext.reserve_llm_call` holds a call's estimate against
  the budgets of its scope in one short transaction that locks the budget rows, so
  concurrent attempts of every daemon overshoot a budget by at most one call each. A
  refused call raises :class:`DeferUntil` (the executor re-queues the task at the
  budget's next UTC period, no retry spent) or, for the task's own ``max_cost_usd``,
  :class:`FailPermanently`. The reservation ends with its ledger row, in the same
  statement (:meth:`record_llm_call` ``settles``), with the attempt (:meth:`close`), or
  by expiry after the agent's timeout if the daemon dies.
* **Provider limits.** :meth:`wait_for_llm_capacity` takes a call's request, input and
  output tokens from the model's shared token buckets, sleeping (cancellable) for as
  long as the database says; :meth:`llm_rate_limited` pauses the model for everyone;
  :meth:`learn_llm_limits` reads the ``anthropic-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.api import (
    AgentDefinition,
    AgentSettings,
    JournaledModelTurn,
    JournaledToolResult,
    LLMCallEstimate,
    LLMCallRecord,
    LLMReservation,
)
from runner.errors import DeferUntil, FailPermanently
from runner.store import attempts as store
from runner.store import journal
from runner.store import llm as llm_store

logger = logging.getLogger("runner.agent")

_LOG_TYPES = {
    "debug", "info", "success", "error", "warning", "state_transition",
    "tool_success", "tool_error", "phase_advance", "user_input_required",
}
# What the contract promises under agent_executions.metrics when an LLM was called.
LLM_METRIC_KEYS = (
    "input_tokens", "output_tokens", "cache_creation_input_tokens",
    "cache_read_input_tokens", "llm_calls", "cost_usd",
)


class AttemptContext:
    """One attempt's view of the runner. Holds no connection between calls."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        attempt: store.StartedAttempt,
        settings: AgentSettings,
        http: httpx.AsyncClient,
        parent_outputs: Mapping[str, Mapping[str, Any]],
        llm_limits: llm_store.Limits | None = None,
        llm_replay: bool = True,
    ) -> None:
        self._pool = pool
        self._llm_limits = llm_limits or llm_store.Limits()
        self._llm_replay = llm_replay
        #: reservations asked for and not yet settled (one may commit even if its
        #: answer is lost): only then has :meth:`close` anything to release
        self._unsettled_reservations = 0
        #: the take that went with the last reservation: (what, its wait, when)
        self._first_take: tuple[llm_store.Take, float, float] | None = None
        self._attempt = attempt
        self._llm_calls = 0
        self._llm_steps = 0
        self._metrics: dict[str, float] = {}
        self._cost = Decimal(0)
        self.task_id: UUID = attempt.task_id
        self.execution_id: UUID = attempt.execution_id
        self.attempt: int = attempt.attempt
        self.agent: AgentDefinition = attempt.agent
        self.settings = settings
        self.http = http
        self.parent_outputs = parent_outputs
        self.workflow_run_id: UUID | None = attempt.workflow_run_id

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        return self._pool.connection()

    async def log(self, message: str, *, level: str = "info", **metadata: Any) -> None:
        log_type = level if level in _LOG_TYPES else "info"
        async with self._pool.connection() as conn:
            await store.append_log(
                conn,
                task_id=self.task_id,
                execution_id=self.execution_id,
                log_type=log_type,
                message=message,
                metadata=metadata,
            )
        logger.log(
            logging.WARNING if log_type in {"error", "warning", "tool_error"} else logging.INFO,
            "agent_log",
            extra={"task_id": str(self.task_id), "agent_message": message},
        )

    async def record_llm_call(
        self, call: LLMCallRecord, *, settles: LLMReservation | None = None
    ) -> None:
        self._llm_calls += 1
        async with self._pool.connection() as conn:
            await store.insert_llm_call(
                conn, attempt=self._attempt, call_index=self._llm_calls, call=call,
                settles=None if settles is None else settles.id,
            )
        if settles is not None:
            self._unsettled_reservations -= 1
        self.add_metrics(
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cache_creation_input_tokens=call.cache_creation_input_tokens,
            cache_read_input_tokens=call.cache_read_input_tokens,
            llm_calls=1,
        )
        self._cost += call.cost_usd
        metrics.llm_call(
            model=call.model,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cache_creation_input_tokens=call.cache_creation_input_tokens,
            cache_read_input_tokens=call.cache_read_input_tokens,
            cost_usd=float(call.cost_usd),
        )

    def next_llm_step(self) -> int:
        self._llm_steps += 1
        return self._llm_steps

    async def journal_lookup(
        self, step: int, fingerprint: str, *, tool_use_id: str | None = None
    ) -> Mapping[str, Any] | None:
        if not self._llm_replay or self.attempt == 1:
            # Off (RUNNER_LLM_REPLAY=off), or the task's first attempt: no earlier
            # attempt journaled anything (no round trip).
            return None
        async with self._pool.connection() as conn:
            return await journal.lookup_turn(
                conn, task_id=self.task_id, kind="model" if tool_use_id is None else "tool",
                step=step, fingerprint=fingerprint, tool_use_id=tool_use_id,
            )

    async def journal_model_turn(self, turn: JournaledModelTurn, *, replayed: bool) -> None:
        async with self._pool.connection() as conn:
            await journal.insert_turn(
                conn, task_id=self.task_id, execution_id=self.execution_id, step=turn.step,
                kind="model", fingerprint=turn.fingerprint, role="assistant",
                content=turn.response.get("content", []), response=turn.response,
                # A replayed turn cost this attempt nothing: the transcript says so.
                input_tokens=0 if replayed else turn.input_tokens,
                output_tokens=0 if replayed else turn.output_tokens,
                cost_usd=Decimal(0) if replayed else turn.cost_usd,
                duration_ms=0 if replayed else turn.duration_ms,
                replayed=replayed,
            )
        if replayed:
            self.add_metrics(llm_replayed_calls=1)
            metrics.llm_replayed_call(model=turn.model)

    async def journal_tool_result(self, result: JournaledToolResult, *, replayed: bool) -> None:
        block: dict[str, Any] = {
            "type": "tool_result", "tool_use_id": result.tool_use_id, "content": result.output,
        }
        if result.is_error:
            block["is_error"] = True
        async with self._pool.connection() as conn:
            await journal.insert_turn(
                conn, task_id=self.task_id, execution_id=self.execution_id, step=result.step,
                kind="tool", fingerprint=result.fingerprint, role="tool", content=block,
                response={"output": result.output, "is_error": result.is_error,
                          "effects": result.effects},
                tool_use_id=result.tool_use_id, tool_name=result.tool_name,
                tool_input=result.tool_input, tool_output=result.output,
                duration_ms=0 if replayed else result.duration_ms, replayed=replayed,
            )

    def add_metrics(self, **values: float) -> None:
        for key, value in values.items():
            self._metrics[key] = self._metrics.get(key, 0) + value

    def observe_http_call(self, service: str, outcome: str) -> None:
        metrics.http_call(service=service, outcome=outcome)

    def execution_metrics(self) -> dict[str, Any]:
        """The figures for ``agent_executions.metrics``."""
        figures: dict[str, Any] = dict(self._metrics)
        if self._llm_calls:
            for key in LLM_METRIC_KEYS:
                figures.setdefault(key, 0)
            # Decimal to 8 places, stored as a JSON number
            figures["cost_usd"] = float(round(self._cost, 8))
        return figures

    # LLM governance ------------------------------------------------------------------

    async def reserve_llm_call(self, estimate: LLMCallEstimate) -> LLMReservation:
        agent = self._attempt.agent
        self._unsettled_reservations += 1
        # The call's first take from the limiter rides along (one round trip less);
        # wait_for_llm_capacity then finds it done.
        take = llm_store.Take(estimate.model, self._llm_limits, estimate.input_tokens,
                              estimate.max_output_tokens) if self._llm_limits.enabled else None
        async with self._pool.connection() as conn:
            result = await llm_store.reserve(
                conn, org_id=agent.org_id, agent_id=agent.id, task_id=self.task_id,
                execution_id=self.execution_id, cost_usd=estimate.cost_usd,
                tokens=estimate.tokens,
                # A dead daemon's reservation stops counting once its attempt would
                # have timed out anyway.
                ttl_seconds=float(agent.timeout_seconds) + _RESERVATION_SLACK_SECONDS,
                take=take,
            )
        if result.reservation_id is not None:
            if take is not None and result.wait is not None:
                self._first_take = (take, result.wait, time.monotonic())
            return LLMReservation(id=result.reservation_id, estimate=estimate)
        self._unsettled_reservations -= 1  # refused: nothing was reserved
        message = result.message or "LLM call refused"
        if result.blocked == "budget":
            assert result.resume_at is not None
            metrics.budget_deferral(agent.agent_type)
            await self.log(message, level="warning", budget_id=str(result.budget_id),
                           resume_at=result.resume_at.isoformat())
            raise DeferUntil(message, at=result.resume_at.astimezone(dt.UTC))
        raise FailPermanently(message)

    async def settle_llm_call(self, reservation: LLMReservation) -> None:
        async with self._pool.connection() as conn:
            await llm_store.release(conn, [reservation.id])
        self._unsettled_reservations -= 1

    async def wait_for_llm_capacity(
        self, model: str, input_tokens: int, max_tokens: int
    ) -> float:
        if not self._llm_limits.enabled:
            return 0.0
        began = time.monotonic()
        first, self._first_take = self._first_take, None
        if first is not None:
            take, wait, at = first
            if (take.model, take.input_tokens, take.output_tokens) == (
                    model, input_tokens, max_tokens):
                if wait <= 0:  # taken with the reservation
                    metrics.llm_throttle_wait(model, 0.0)
                    return 0.0
                began = at
                await asyncio.sleep(min(max(wait - (time.monotonic() - at),
                                            _MIN_THROTTLE_SLEEP), _MAX_THROTTLE_SLEEP))
        try:
            while True:
                async with self._pool.connection() as conn:
                    wait = await llm_store.take_capacity(
                        conn, model=model, limits=self._llm_limits,
                        input_tokens=input_tokens, output_tokens=max_tokens)
                if wait <= 0:
                    return time.monotonic() - began
                # Try again at the earliest moment there could be room, but at least
                # every few seconds: another daemon's learning may change the picture.
                await asyncio.sleep(min(max(wait, _MIN_THROTTLE_SLEEP), _MAX_THROTTLE_SLEEP))
        finally:
            metrics.llm_throttle_wait(model, time.monotonic() - began)

    async def llm_rate_limited(self, model: str, retry_after: float | None) -> None:
        metrics.llm_rate_limited(model)
        if self._llm_limits.enabled and retry_after is not None and retry_after > 0:
            async with self._pool.connection() as conn:
                await llm_store.pause_model(conn, model=model, seconds=retry_after)

    async def learn_llm_limits(
        self, model: str, headers: Mapping[str, str], *, age_seconds: float = 0.0,
        unused_input_tokens: int = 0, unused_output_tokens: int = 0,
    ) -> None:
        limits = self._llm_limits
        if not limits.enabled:
            return
        buckets = [learned_bucket(headers, kind, limits.window_seconds, age_seconds, unused)
                   for kind, unused in (("requests", 0), ("input-tokens", unused_input_tokens),
                                        ("output-tokens", unused_output_tokens))]
        heard = any(b.limit is not None or b.remaining is not None for b in buckets)
        configured = limits.input_tokens is not None or limits.output_tokens is not None
        if not heard and not (configured and (unused_input_tokens or unused_output_tokens)):
            return  # nothing learned and nothing to give back: no round trip
        async with self._pool.connection() as conn:
            await llm_store.learn_limits(
                conn, model=model, limits=self._llm_limits, requests=buckets[0],
                input_tokens=buckets[1], output_tokens=buckets[2])

    async def close(self) -> None:
        """The attempt is over: release whatever reservations it still holds (calls
        that failed, or were cancelled, before their ledger row)."""
        if not self._unsettled_reservations:
            return  # every reservation was settled (or none made): no round trip
        async with self._pool.connection() as conn:
            await llm_store.release_execution(conn, self.execution_id)


_RESERVATION_SLACK_SECONDS = 60.0
_MIN_THROTTLE_SLEEP = 0.01
_MAX_THROTTLE_SLEEP = 5.0


def learned_bucket(
    headers: Mapping[str, str], kind: str, window_seconds: float, age_seconds: float = 0.0,
    unused: float = 0.0,
) -> llm_store.LearnedBucket:
    """``anthropic-ratelimit-<kind>-limit`` / ``-remaining``, per minute in the API,
    scaled to the limiter's window. The API counts ``remaining`` when the request
    arrived; ``age_seconds`` later (the response's time) its bucket has refilled by that
    much at the limit's rate, and that is the level to compare with ours."""
    scale = window_seconds / 60.0

    def number(name: str) -> float | None:
        value = headers.get(f"anthropic-ratelimit-{kind}-{name}")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    limit = number("limit")
    remaining = number("remaining")
    if limit is not None and remaining is not None and age_seconds > 0:
        remaining = min(limit, remaining + limit * age_seconds / window_seconds)
    return llm_store.LearnedBucket(
        limit=limit * scale if limit is not None else None,
        remaining=remaining * scale if remaining is not None else None,
        unused=max(0.0, unused),
    )
