"""The :class:`runner.api.AgentContext` the executor hands to an agent for one attempt."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.api import AgentDefinition, AgentSettings, LLMCallRecord
from runner.store import attempts as store

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
    ) -> None:
        self._pool = pool
        self._attempt = attempt
        self._llm_calls = 0
        self._metrics: dict[str, float] = {}
        self._cost = Decimal(0)
        self.task_id: UUID = attempt.task_id
        self.execution_id: UUID = attempt.execution_id
        self.attempt: int = attempt.attempt
        self.agent: AgentDefinition = attempt.agent
        self.settings = settings
        self.http = http
        self.parent_outputs = parent_outputs

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

    async def record_llm_call(self, call: LLMCallRecord) -> None:
        self._llm_calls += 1
        async with self._pool.connection() as conn:
            await store.insert_llm_call(
                conn, attempt=self._attempt, call_index=self._llm_calls, call=call
            )
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
